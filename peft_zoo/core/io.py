"""Crash-safe file writes (shared by adapter checkpoints, PEFT-format saves and the exercise
runner) and the one reader of legacy torch tensor files.

A write goes to a temporary file in the target's directory, is flushed to disk, renamed over
the target (atomic on POSIX and Windows) and the directory entry is flushed too. A crash
(``kill -9``, power loss) therefore leaves either the old file or the new one, plus at worst
an orphaned temporary file. Those are named recognisably::

    .<name>.peft_zoo-tmp-<host>-<pid>-<random>

(``host``: 8 hex digits of a hash of the host name, ``pid``: the writing process), and the
next :func:`atomic_write` into the same directory removes the orphans it can prove stale:

- written on this host by a process that no longer exists (never our own pid: another
  thread of this process may be writing it right now), or
- untouched for :data:`STALE_AFTER_S` seconds, whoever wrote it (a live writer keeps
  its file's modification time fresh while it writes; no save takes a day).

A concurrent writer's file is never removed: its pid is alive (same host) or it is fresh.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from pathlib import Path

import torch

TMP_MARK = ".peft_zoo-tmp-"
STALE_AFTER_S = 24 * 3600.0  # an orphan from another host (or a reused pid) goes after a day
_TMP_RE = re.compile(r"^\..*\.peft_zoo-tmp-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[0-9a-f]{16}$", re.S)
_MAX_STEM = 150  # keep the temporary name under the usual 255-byte limit


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_path(path: Path) -> Path:
    """A fresh temporary name for ``path``, in the same directory (see the module docstring)."""
    stem = path.name[:_MAX_STEM]
    return path.parent / f".{stem}{TMP_MARK}{_host_tag()}-{os.getpid()}-{secrets.token_hex(8)}"


def _pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process on this host? Unknown counts as alive (never delete then)."""
    if pid == os.getpid() or pid <= 0 or os.name == "nt":  # on Windows os.kill would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, and belongs to someone else
        return True
    return True


def remove_stale_temp_files(directory: Path, *, now: float | None = None) -> list[Path]:
    """Remove the orphaned temporary files of crashed :func:`atomic_write` calls in
    ``directory`` (rules in the module docstring); return the paths removed. Never raises
    for a file that vanished or cannot be removed."""
    now = time.time() if now is None else now
    host = _host_tag()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_RE.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                continue
            dead = match["host"] == host and not _pid_alive(int(match["pid"]))
            if dead or now - info.st_mtime > STALE_AFTER_S:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # removed by someone else meanwhile, or not ours to remove
    return removed


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename) to disk; a no-op where the platform or the
    file system cannot do it."""
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. a directory we may write but not list: the rename itself is done
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to a fresh temporary name in the same directory (so the final rename is
    atomic), are flushed to disk, then replace ``path``; the directory is flushed after the
    rename. Stale temporary files of earlier crashed writes in that directory are removed
    first. A new file gets the permissions ``open()`` would give it (0o666 minus the umask);
    an existing file keeps its mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.exists():
                os.chmod(tmp, path.stat().st_mode & 0o777)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def read_torch_state_dict(file: Path, error: type[Exception]) -> dict[str, torch.Tensor]:
    """A legacy ``.pt`` / ``.bin`` file as ``{name: tensor}``, read with
    ``torch.load(weights_only=True)`` (never unpickles code); anything else raises ``error``
    naming the file."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise error(f"{file}: cannot be read as a tensor checkpoint ({err})") from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise error(f"{file}: expected a dict of name -> tensor")
    return state
