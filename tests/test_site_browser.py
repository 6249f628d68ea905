"""The built site, loaded in headless Chromium, works offline: maths is typeset, images load,
and no request leaves the machine.

The site is built once (``mkdocs build --strict``) and served from a local ``http.server``
thread. Chromium is driven over the DevTools protocol with ``websocket-client`` (no browser
download: Debian's ``chromium`` package). If ``chromium`` is missing and we are root with
``apt-get``, it is installed (``apt-get install -y --no-install-recommends chromium``);
otherwise the tests are skipped with the command to run. Its resolver maps every host but
127.0.0.1 to "not found", so a stray request fails fast instead of reaching the network, and
every request a page makes is recorded and checked. Screenshots go to
``build/screenshots/*.png`` for a person to look at.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
websocket = pytest.importorskip("websocket", reason='websocket-client: pip install -e ".[docs]"')

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
INSTALL = "apt-get install -y --no-install-recommends chromium"

# page path in the site -> screenshot name
PAGES = {
    "": "home",
    "lora/": "lora",
    "notebooks/01_lora_from_scratch/": "notebook_01",
    "challenges/": "challenges",
    "batched/": "batched",
}


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def apt_install_chromium() -> str:
    """``apt-get install chromium`` once, even with several pytest-xdist workers asking; the
    end of apt-get's output, for the failure message."""
    import fcntl

    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_path = Path(tempfile.gettempdir()) / "peft_zoo-chromium-install.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits here, then finds it installed
        if find_chromium() is not None:
            return ""
        wait = ["-o", "DPkg::Lock::Timeout=120"]
        output = ""
        for cmd in (["apt-get", "update", "-qq"], [*INSTALL.split(), "-qq"]):
            run = subprocess.run(
                [*cmd, *wait], env=env, capture_output=True, text=True, timeout=600, check=False
            )
            output += run.stdout + run.stderr
        return output[-2000:]


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        output = apt_install_chromium()
        path = find_chromium()
        if path is None:  # root with apt-get (CI): a failed install is a failure, not a skip
            pytest.fail(f"apt-get could not install chromium:\n{output}")
    if path is None:
        pytest.skip(f"no headless browser: install Debian's chromium ({INSTALL}, as root)")
    return path


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def server(site: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class Browser:
    """One headless Chromium tab driven over the DevTools protocol (JSON over a websocket)."""

    def __init__(self, executable: str, profile: Path) -> None:
        args = [
            executable,
            "--headless=new",
            "--no-sandbox",  # we may be root
            "--disable-gpu",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            tab = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        start = len(self.events)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events[start:]):
            if time.monotonic() > deadline:
                raise TimeoutError(event)
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        # MathJax typesets after load; its startup promise settles when the page is done
        self.js("window.MathJax?.startup?.promise ?? Promise.resolve()")
        self.js("document.fonts.ready.then(() => true)")

    def requested(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(chromium, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


# Text a reader sees outside code and typeset maths (page, navigation, table of contents), and
# what MathJax left on the page.
PAGE_REPORT = """(() => {
  const main = document.querySelector(".md-content") || document.body;
  const skip = "pre, code, mjx-container, script, style";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const text = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el.closest(skip) && el.getClientRects().length) text.push(n.textContent);
  }
  const maths = [...main.querySelectorAll(".arithmatex")];
  return {
    text: text.join(" "),
    maths: maths.length,
    typeset: maths.filter(m => m.querySelector("mjx-container")).length,
    errors: [...main.querySelectorAll("mjx-merror")].map(e => e.textContent),
    images: [...document.images].map(i => [i.currentSrc, i.complete && i.naturalWidth > 0]),
    pageWidth: document.documentElement.scrollWidth,
    viewWidth: window.innerWidth,
  };
})()"""

RAW_TEX = ("\\(", "\\)", "\\[", "\\]", "$$")
DOLLAR_TEX = re.compile(r"\$[^$\n]*[\\^_{}][^$\n]*\$")  # $W_0$, $\alpha$: TeX, not prices


def check_page(browser: Browser, server: str, path: str) -> dict[str, Any]:
    browser.open(server + path)
    report = browser.js(PAGE_REPORT)
    offsite = [u for u in browser.requested() if not u.startswith((server, "data:", "blob:"))]
    assert offsite == [], f"/{path} requested off-machine URLs: {offsite}"
    failed = [
        e["params"]["response"]["url"]
        for e in browser.events
        if e.get("method") == "Network.responseReceived" and e["params"]["response"]["status"] >= 400
    ]
    assert failed == [], f"/{path}: local requests failed: {failed}"
    assert report["errors"] == [], f"/{path}: MathJax errors {report['errors']}"
    assert report["typeset"] == report["maths"], f"/{path}: {report} maths left untypeset"
    text = report["text"]
    leftover = [d for d in RAW_TEX if d in text]
    assert leftover == [], f"/{path}: raw TeX delimiters in the visible text: {leftover}"
    dollars = DOLLAR_TEX.findall(text)
    assert dollars == [], f"/{path}: raw $...$ TeX in the visible text: {dollars[:5]}"
    broken = [src for src, ok in report["images"] if not ok]
    assert broken == [], f"/{path}: images that did not load: {broken}"
    assert report["pageWidth"] <= report["viewWidth"], f"/{path} scrolls sideways: {report}"
    return report


@pytest.mark.timeout(900)  # includes installing Chromium on a fresh machine
def test_pages_render_offline_with_maths_and_images(browser: Browser, server: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    reports = {}
    for path, name in PAGES.items():
        reports[path] = check_page(browser, server, path)
        browser.screenshot(SHOTS / f"{name}.png")
        if name.startswith("notebook"):  # and one of its figures
            browser.js("document.querySelector('.md-content img').scrollIntoView({block: 'center'})")
            time.sleep(0.5)  # let the header's title transition finish
            browser.screenshot(SHOTS / f"{name}_figure.png")
    # each kind of page really carries what is checked: maths, figures
    assert reports["lora/"]["maths"] > 20
    assert reports["batched/"]["maths"] > 5
    assert reports["notebooks/01_lora_from_scratch/"]["maths"] > 5
    assert len(reports["notebooks/01_lora_from_scratch/"]["images"]) >= 3
    # the guide links land on rendered notebook pages, not on raw .ipynb downloads
    hrefs = browser.js("[...document.querySelectorAll('.md-content a')].map(a => a.href)")
    assert any(h.endswith("/notebooks/04_batched_multi_adapter/") for h in hrefs), hrefs
    assert not [h for h in hrefs if h.endswith(".ipynb")], hrefs


# Each display equation stays inside the text column: it fits, or it scrolls in its own box.
DISPLAY_OVERFLOW = """(() => {
  const column = document.querySelector(".md-content").getBoundingClientRect();
  return [...document.querySelectorAll("div.arithmatex")].map(div => {
    const box = div.getBoundingClientRect();
    const style = getComputedStyle(div);
    const scrolls = ["auto", "scroll"].includes(style.overflowX);
    return {
      inside: box.left >= column.left - 1 && box.right <= column.right + 1,
      fits: div.scrollWidth <= div.clientWidth + 1,
      scrolls,
    };
  });
})()"""


@pytest.mark.timeout(900)  # includes installing Chromium on a fresh machine
def test_batched_display_maths_is_never_cut_off(browser: Browser, server: str) -> None:
    """Desktop and phone widths: every display equation on batched.md fits or scrolls."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=900,
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        try:
            check_page(browser, server, "batched/")
            boxes = browser.js(DISPLAY_OVERFLOW)
            assert boxes, "batched.md has display maths"
            for i, box in enumerate(boxes):
                assert box["inside"], f"{width}px: display equation {i} sticks out: {box}"
                assert box["fits"] or box["scrolls"], f"{width}px: equation {i} is cut off: {box}"
            first = "document.querySelector('div.arithmatex').scrollIntoView({block: 'center'})"
            browser.js(first)
            time.sleep(0.5)  # let the header's title transition finish
            browser.screenshot(SHOTS / f"batched_maths_{width}px.png")
        finally:
            browser.call("Emulation.clearDeviceMetricsOverride")
