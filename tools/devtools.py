"""A headless Chromium page driven over the DevTools protocol, standard library only.

Chromium is started with ``--remote-debugging-pipe``: JSON messages ending in a NUL byte on file
descriptors 3 (commands) and 4 (replies). Used by tools/build_pdf.py (printing the book),
tools/measure_pages.py (bytes and first paint per page) and the browser tests in tests/.
"""

from __future__ import annotations

# Headless and quiet; callers that must stay offline add a dead proxy (tests/conftest.py).
HEADLESS_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio",
]


class DevToolsPage:
    """One page of a headless Chromium, controlled over the DevTools protocol."""

    def __init__(self, chromium: str, size=(1280, 1600), flags=None):
        import fcntl
        import os
        import subprocess
        import tempfile

        flags = list(HEADLESS_FLAGS if flags is None else flags)

        self._os = os
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-devtools-")
        cmd_r, self._cmd_w = os.pipe()
        self._reply_r, reply_w = os.pipe()

        def pipes_to_fd3_fd4():  # in the child, before exec
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(reply_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.closerange(5, 4096)

        self.proc = subprocess.Popen(
            [chromium, *flags, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipes_to_fd3_fd4, close_fds=False)
        os.close(cmd_r)
        os.close(reply_w)
        self._buf, self._id, self.events, self.session = b"", 0, [], None
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        attached = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")

    def _message(self, timeout: float) -> dict:
        import json
        import select
        import time

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reply_r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer over the DevTools pipe")
            chunk = self._os.read(self._reply_r, 1 << 20)
            assert chunk, f"chromium exited (rc={self.proc.poll()})"
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, timeout: float = 60, **params):
        import json

        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self._os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def goto(self, url: str, timeout: float = 60):
        self.events = []  # events of an earlier page must not count for this one
        self.send("Page.navigate", url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message(timeout))

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, f"JavaScript failed: {r['exceptionDetails']}"
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(expression):
                return True
            time.sleep(0.2)
        return False

    def click(self, x: float, y: float):
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    screenshot_dir = None  # a folder for ``screenshot(name)``; tests set _build/screenshots

    def screenshot(self, name: str, clip: dict = None, beyond_viewport: bool = True):
        """Save a PNG to <screenshot_dir>/<name>.png: the ``clip`` rectangle (page
        coordinates) or, with ``beyond_viewport=False`` and no clip, what the viewport shows."""
        import base64
        from pathlib import Path

        folder = Path(self.screenshot_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        params = {"format": "png", "captureBeyondViewport": beyond_viewport}
        if clip:
            params["clip"] = dict(clip, scale=1)
        out = folder / f"{name}.png"
        out.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
        return out

    def emulate_phone(self, width: int = 390, height: int = 844, scale: float = 2):
        """A phone's viewport: mobile layout, device-pixel ratio ``scale``, touch input."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=scale, mobile=True)
        self.send("Emulation.setTouchEmulationEnabled", enabled=True, maxTouchPoints=1)

    def tap(self, x: float, y: float):
        """A finger tap (touch start and end) at viewport coordinates."""
        for kind, points in (("touchStart", [{"x": x, "y": y}]), ("touchEnd", [])):
            self.send("Input.dispatchTouchEvent", type=kind, touchPoints=points)

    def settle(self, timeout: float = 30):
        """Wait until MathJax (if the page loads it) has typeset the page, then a moment more
        for late requests (widget manager, fonts)."""
        import time

        self.js("window.MathJax && MathJax.startup && MathJax.startup.promise ?"
                " MathJax.startup.promise.then(() => true) : true")
        time.sleep(0.3)
        self.wait_for("document.readyState === 'complete'", timeout)

    def problems(self) -> list:
        """Console errors, uncaught exceptions and failed requests (404s, unreachable files,
        blocked off-site requests) of the current page, as readable strings."""
        out = []
        failed_ids = set()
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"}
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                if p["entry"].get("networkRequestId") in failed_ids:
                    continue
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                failed_ids.add(p["requestId"])
                out.append(f"failed request: {urls.get(p['requestId'], '?')} ({p.get('errorText')})")
            elif m == "Network.responseReceived" and p["response"].get("status", 200) >= 400:
                failed_ids.add(p["requestId"])
                out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        return out

    def requested_urls(self) -> list:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def close(self):
        import subprocess

        try:
            self.send("Browser.close", timeout=10)
            self.proc.wait(timeout=10)
        except (AssertionError, TimeoutError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._os.close(self._cmd_w)
        self._os.close(self._reply_r)
        self._profile.cleanup()
