"""The ``notebooks`` extra installs a notebook front end: ``jupyter lab notebooks/`` starts and
serves the notebooks.

JupyterLab is started headless (``--no-browser``) on a free local port with a token, against
``notebooks/``; the test fetches a notebook through the Jupyter REST API with ``urllib`` and the
``/lab`` page, then stops the server. Runtime and config files go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jupyterlab", reason='JupyterLab: pip install -e ".[notebooks]"')

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_lora_from_scratch.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A running ``jupyter lab`` on notebooks/: (base URL, token)."""
    token, port = secrets.token_hex(16), free_port()
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI runs as root
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={ROOT / 'notebooks'}",
    ]
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(f"{base}/api/status", token)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"jupyter lab did not start:\n{(tmp_path / 'lab.log').read_text()}")
            time.sleep(0.2)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.timeout(60)
def test_jupyter_lab_serves_the_notebooks(lab: tuple[str, str]) -> None:
    base, token = lab
    status, body = get(f"{base}/api/contents/{NOTEBOOK}?content=1", token)
    model: dict[str, Any] = json.loads(body)
    assert status == 200 and model["type"] == "notebook" and model["name"] == NOTEBOOK
    cells = model["content"]["cells"]
    assert cells and cells[0]["source"].startswith("# 01")
    # the front end itself is installed, not only the server
    status, page = get(f"{base}/lab", token)
    assert status == 200 and b"JupyterLab" in page
    # and the token is required
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(f"{base}/api/contents/{NOTEBOOK}", "wrong-token")
    assert refused.value.code == 403


def test_jupyter_command_is_on_path_next_to_python() -> None:
    """``jupyter lab notebooks/`` (the README's command) needs the ``jupyter`` script."""
    scripts = Path(sys.executable).parent
    assert (scripts / "jupyter").exists() or shutil.which("jupyter"), "jupyter not installed"
