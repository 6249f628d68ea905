"""The side environment the AdapterHub equivalence tests run in.

AdapterHub's ``adapters`` 1.3.0 pins ``transformers~=4.57.6``; this project runs transformers
5.x. So ``tests/test_adapterhub.py`` builds ``build/adapterhub-env``: a virtual environment
made with ``--system-site-packages`` (torch, peft_zoo, pytest and hypothesis come from the
main environment) into which pip installs only the pins of ``constraints-adapterhub.txt``;
packages installed in the venv shadow the main environment's transformers. The tests in
``tests/adapterhub/`` then run there in a subprocess.

The environment is reused while a marker file records the same hash of the pins (and of
this interpreter); a file lock (``fcntl``) keeps parallel pytest workers from building it
twice at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints-adapterhub.txt"
ENV_DIR = ROOT / "build" / "adapterhub-env"
MARKER = ".peft_zoo-constraints-sha256"
PIP_TIMEOUT_S = 600


class EnvBuildError(RuntimeError):
    """The side environment could not be built (pip failed, no network...)."""


def env_python(env: Path = ENV_DIR) -> Path:
    """The venv's interpreter (``bin/python``, ``Scripts/python.exe`` on Windows)."""
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def constraints_hash() -> str:
    """SHA-256 of the pins and of the interpreter that builds the venv."""
    digest = hashlib.sha256(CONSTRAINTS.read_bytes())
    digest.update(f"{sys.executable} {sys.version}".encode())
    return digest.hexdigest()


def _is_current(env: Path, want: str) -> bool:
    marker = env / MARKER
    return env_python(env).exists() and marker.exists() and marker.read_text().strip() == want


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise EnvBuildError(f"{what}: timed out after {PIP_TIMEOUT_S} s: {' '.join(cmd)}") from err
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise EnvBuildError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}\n"
            f"The AdapterHub equivalence tests need pip to install {CONSTRAINTS.name} (network access "
            f"to the package index) into {ENV_DIR}."
        )


def _build(env: Path, want: str) -> None:
    if env.exists():
        shutil.rmtree(env)
    # No pip inside the venv: this environment's pip installs into it (``pip --python``, pip >= 22.3),
    # which also works where the interpreter ships without ensurepip (Debian's python3 without -venv).
    _run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(env)],
        "creating the venv",
    )
    pip = [sys.executable, "-m", "pip", "--python", str(env_python(env)), "install"]
    _run(
        [*pip, "--disable-pip-version-check", "--no-input", "-r", str(CONSTRAINTS)],
        "installing the AdapterHub pins",
    )
    (env / MARKER).write_text(want + "\n")


def ensure_env(env: Path = ENV_DIR) -> Path:
    """Build (or reuse) the side environment; return its interpreter. Raises
    :class:`EnvBuildError` with pip's output when it cannot be built."""
    want = constraints_hash()
    if _is_current(env, want):
        return env_python(env)
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / (env.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building it right now
        try:
            if not _is_current(env, want):
                _build(env, want)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return env_python(env)


if __name__ == "__main__":  # python tests/adapterhub_env.py: build it and print the interpreter
    print(ensure_env())
