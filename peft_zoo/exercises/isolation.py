"""Run each grader module in a forked child so that one broken learner file fails only itself.

A learner's code can end the process that grades it: ``os._exit(0)`` at import or inside
``forward``, a segfault (``ctypes.string_at(0)``), ``os.abort()``. Run in-process, that ends
the whole pytest session (often with exit code 0 and nothing reported). Here the parent
session forks one child per grader module (cheap: torch is already imported); the child
runs that module's tests with the normal pytest protocol and sends every report back
through a pipe. The parent logs the reports as its own (terminal, JUnit, ``-x`` all work).

When a child dies before it finishes, the test it was running fails with a message that
says how the process died (exit status or signal), and a fresh child takes over the rest
of the module. Where ``os.fork`` is missing, or with ``--pdb`` / ``--no-isolate``, the tests
run in this process as usual.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import pickle
import re
import select
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import pytest
from _pytest.config import create_terminal_writer

_HEADER = struct.Struct("!I")
_SIGNALS = {
    "SIGSEGV": "a segmentation fault (the code read or wrote invalid memory)",
    "SIGABRT": "an abort (os.abort() or a failed check inside a C library)",
    "SIGBUS": "a bus error (invalid memory access)",
    "SIGFPE": "a fatal arithmetic error",
    "SIGILL": "an illegal instruction",
    "SIGKILL": "SIGKILL (out of memory, or stopped after a time limit)",
    "SIGTERM": "SIGTERM",
}


def forking_available(config: pytest.Config) -> bool:
    """Whether to isolate: fork exists and no debugger or ``--no-isolate`` asks otherwise."""
    if not hasattr(os, "fork"):
        return False
    if config.getoption("usepdb", False) or config.getoption("trace", False):
        return False
    if hasattr(config, "workerinput") or getattr(config.option, "dist", "no") != "no":
        return False  # pytest-xdist already runs tests in workers and replaces one that dies
    return not config.getoption("--no-isolate", False)


def describe_death(status: int) -> str:
    """``os.waitpid`` status -> words: 'exited with status 0 ...' or 'was killed by SIGSEGV ...'."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by signal {number} ({name}): {_SIGNALS.get(name, name)}"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return (
        f"exited with status {code} before the tests finished: does your code call os._exit(), "
        "sys.exit() or exit() (at import or inside a method)?"
    )


def _where(crash_log: str, learner_file: str | None) -> str:
    """``' (at ex01_lora_linear.py:12 in forward)'`` from faulthandler's dump, if it names the file."""
    if not learner_file:
        return ""
    name = os.path.basename(learner_file)
    for match in re.finditer(r'File "([^"]+)", line (\d+) in (\S+)', crash_log):
        if os.path.basename(match.group(1)) == name:
            return f" (at {name}:{match.group(2)} in {match.group(3)})"
    return ""


# ----------------------------------------------------------------------------- child side


def _send(stream: BinaryIO, message: tuple[Any, ...]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


class _Forwarder:
    """Plugin registered in the child: sends every log event to the parent."""

    def __init__(self, config: pytest.Config, stream: BinaryIO) -> None:
        self.config, self.stream = config, stream

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        _send(self.stream, ("start", nodeid))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        _send(self.stream, ("report", data))

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        _send(self.stream, ("finish", nodeid))


def _child(items: Sequence[pytest.Item], nextitem: pytest.Item | None, write_fd: int, log: BinaryIO) -> None:
    """Run ``items`` with the usual protocol, forwarding the reports; never returns."""
    code = 3
    try:
        faulthandler.enable(file=log, all_threads=False)
        config = items[0].config
        stream = os.fdopen(write_fd, "wb")
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            # The parent prints; the child only reports. A silent reporter stays registered
            # because pytest's assertion messages ask it for the terminal writer.
            # pytest has no public switch for this, so its writer is pointed at os.devnull.
            reporter._tw = create_terminal_writer(config, open(os.devnull, "w"))  # noqa: SIM115
        config.pluginmanager.register(_Forwarder(config, stream), "peft_zoo_forwarder")
        session = items[0].session
        for i, item in enumerate(items):
            following = items[i + 1] if i + 1 < len(items) else nextitem
            config.hook.pytest_runtest_protocol(item=item, nextitem=following)
            if session.shouldfail or session.shouldstop:
                break
        _send(stream, ("done",))
        code = 0
    except BaseException:
        # A fault in the grading machinery itself (not the learner's code, whose errors
        # pytest reports): show it, so it is never mistaken for a learner's hard exit.
        traceback.print_exc(file=sys.__stderr__)
        raise
    finally:
        for handle in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting anyway
                handle.flush()
        os._exit(code)


# ----------------------------------------------------------------------------- parent side


def _read_exact(fd: int, size: int, deadline: Callable[[], float | None]) -> bytes | None:
    chunks, left = [], size
    while left:
        wait = deadline()
        if wait is not None and wait <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _messages(fd: int, gap: float | None) -> Iterator[tuple[Any, ...]]:
    """Messages from the child until EOF; TimeoutError when none arrives within ``gap`` s."""
    while True:
        limit = None if gap is None else time.monotonic() + gap

        def deadline(limit: float | None = limit) -> float | None:
            return None if limit is None else limit - time.monotonic()

        header = _read_exact(fd, _HEADER.size, deadline)
        if header is None:
            return
        body = _read_exact(fd, _HEADER.unpack(header)[0], deadline)
        if body is None:
            return
        yield pickle.loads(body)


def _gap(item: pytest.Item) -> float | None:
    """How long the parent waits for news from a child: the test's own timeout plus a margin."""
    marker = item.get_closest_marker("timeout")
    seconds: Any = marker.args[0] if marker is not None and marker.args else None
    if seconds is None:
        try:
            seconds = item.config.getini("timeout")
        except ValueError:
            return None
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return None
    return 2 * value + 60 if value > 0 else None


class Isolator:
    """Plugin for the parent session: its test loop forks one child per grader module.

    ``wanted(item)`` says which items to isolate (the others run here as usual);
    ``describe(item)`` gives the challenge's label and the learner's file for crash messages.
    """

    def __init__(
        self,
        config: pytest.Config,
        wanted: Callable[[pytest.Item], bool],
        describe: Callable[[pytest.Item], tuple[str, str | None]],
    ) -> None:
        self.config, self.wanted, self.describe = config, wanted, describe
        self.done: set[str] = set()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        """pytest's own loop (same stop rules), with each grader module run in a child."""
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            s = "s" if session.testsfailed != 1 else ""
            raise session.Interrupted(f"{session.testsfailed} error{s} during collection")
        if session.config.option.collectonly:
            return True
        items, i = list(session.items), 0
        while i < len(items):
            item = items[i]
            end = i + 1
            if self.wanted(item):
                module = getattr(item, "module", None)
                while end < len(items) and getattr(items[end], "module", None) is module:
                    end += 1
                batch = items[i:end]
                following = items[end] if end < len(items) else None
                while batch and not (session.shouldfail or session.shouldstop):
                    batch = self._run(batch, following)
            else:
                following = items[end] if end < len(items) else None
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=following)
            if session.shouldfail:
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)
            i = end
        return True

    def _run(self, batch: list[pytest.Item], nextitem: pytest.Item | None) -> list[pytest.Item]:
        """Run ``batch`` in one child; return the items still to run after a crash."""
        read_fd, write_fd = os.pipe()
        with tempfile.TemporaryFile() as log:
            sys.stdout.flush()
            sys.stderr.flush()
            gc.freeze()  # the child's collector then skips the inherited objects: far fewer pages copied
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child never returns
                os.close(read_fd)
                _child(batch, nextitem, write_fd, log)
            gc.unfreeze()
            os.close(write_fd)
            relay = _Relay(self.config, batch, self.done)
            try:
                for message in _messages(read_fd, _gap(batch[0])):
                    relay.handle(message)
            except TimeoutError:
                relay.timed_out = True
                os.kill(pid, signal.SIGKILL)
            finally:
                os.close(read_fd)
                _, status = os.waitpid(pid, 0)
            if relay.finished:
                return []
            log.seek(0)
            crash_log = log.read().decode("utf-8", "replace")
        left = [it for it in batch if it.nodeid not in self.done]
        victim = relay.current or (left[0] if left else None)  # died between tests: blame the next
        if victim is not None:
            self._report_crash(victim, relay, status, crash_log)
        return [it for it in left if it is not victim]

    def _report_crash(self, item: pytest.Item, relay: _Relay, status: int, crash_log: str) -> None:
        label, learner = self.describe(item)
        if relay.timed_out:
            why = "stopped responding and was killed (an infinite loop in C code, or a deadlock?)"
        else:
            why = describe_death(status) + _where(crash_log, learner)
        report = pytest.TestReport(
            nodeid=item.nodeid,
            location=item.location,
            keywords={name: 1 for name in item.keywords},
            outcome="failed",
            longrepr=f"{label}: the grading process died while running this test: it {why}",
            when="teardown" if "call" in relay.phases else "call",
            duration=time.monotonic() - relay.started,
        )
        if relay.current is None:
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        self.done.add(item.nodeid)
        item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


class _Relay:
    """Replays a child's log events in the parent, remembering the test in progress."""

    def __init__(self, config: pytest.Config, batch: Sequence[pytest.Item], done: set[str]) -> None:
        self.config, self.done = config, done
        self.by_id = {it.nodeid: it for it in batch}
        self.current: pytest.Item | None = None
        self.phases: list[str] = []
        self.started = time.monotonic()
        self.finished = self.timed_out = False

    def handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "start":
            self.current, self.phases, self.started = self.by_id[message[1]], [], time.monotonic()
            self.current.ihook.pytest_runtest_logstart(
                nodeid=self.current.nodeid, location=self.current.location
            )
        elif kind == "report":
            report = self.config.hook.pytest_report_from_serializable(config=self.config, data=message[1])
            self.phases.append(report.when)
            self.by_id[report.nodeid].ihook.pytest_runtest_logreport(report=report)
        elif kind == "finish":
            item = self.by_id[message[1]]
            self.done.add(item.nodeid)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            self.current = None
        elif kind == "done":
            self.finished = True


def add_option(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-isolate",
        action="store_true",
        default=False,
        help="run the graders in this process (to debug them); a learner file that exits or crashes "
        "then ends the whole run",
    )


__all__ = ["Isolator", "add_option", "describe_death", "forking_available"]
