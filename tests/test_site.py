"""Browser checks of the built book, offline, in headless Chromium.

The ``site`` fixture (tests/conftest.py) builds the book strictly if the last clean build is
older than any source, then opens pages as file:// URLs with networking off. To check another
page, add a test:

    def test_my_page(site):
        dom = site.render("notebooks/03-newton.html")
        assert "widget-slider" in dom
        site.screenshot("notebooks/03-newton.html", "03-newton")

Screenshots land in _build/screenshots/ (look at them: they show what a reader sees).
"""

import re

OVERVIEW = "chapters/01-overview.html"


def scripts(dom: str) -> list[str]:
    return re.findall(r"<script[^>]*\ssrc=\"([^\"]+)\"", dom)


def test_index_redirects_to_overview(site):
    assert "01-overview.html" in (site.html / "index.html").read_text(encoding="utf-8")


def test_math_renders_offline(site):
    dom = site.render(OVERVIEW)
    # MathJax replaced the TeX by its CHTML output ...
    assert "<mjx-container" in dom, "MathJax did not typeset the overview page"
    # ... and no unprocessed TeX is left behind.
    assert "$$" not in dom
    assert not re.search(r"\\\[|\\\(", re.sub(r"<(script|pre|code)[\s\S]*?</\1>", "", dom)), \
        "raw \\( or \\[ delimiters left in the page"
    site.screenshot(OVERVIEW, "01-overview")


def test_no_external_scripts(site):
    """MathJax, RequireJS and the widget manager are served from _static/, not from a CDN."""
    for page in sorted(site.html.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        external = [s for s in scripts(text) if re.match(r"(https?:)?//", s)]
        external += re.findall(r"<link[^>]*rel=\"stylesheet\"[^>]*href=\"((?:https?:)?//[^\"]+)\"", text)
        assert not external, f"{page.relative_to(site.html)} loads external assets: {external}"


def test_api_reference_rendered(site):
    dom = site.render("chapters/api.html")
    assert 'id="physgrad.problem.Problem"' in dom, "autodoc did not document physgrad.Problem"
    site.screenshot("chapters/api.html", "api")


# --- notebooks/05-comparison: math, and the kernel-free fallback of the explorers -----------------
# Moving the fallback's slider needs a real input event, which --dump-dom cannot send. DevToolsPage
# drives the same headless Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe:
# JSON messages ending in a NUL byte on fds 3/4) -- standard library only, nothing to install.

COMPARISON = "notebooks/05-comparison.html"


class DevToolsPage:
    """One page of a headless Chromium, controlled over the DevTools protocol."""

    def __init__(self, chromium: str, size=(1280, 1600)):
        import fcntl
        import os
        import subprocess
        import tempfile

        from conftest import CHROMIUM_FLAGS

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
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipes_to_fd3_fd4, close_fds=False)
        os.close(cmd_r)
        os.close(reply_w)
        self._buf, self._id, self.events, self.session = b"", 0, [], None
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        attached = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
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

    def screenshot(self, name: str, clip: dict = None):
        import base64

        from conftest import SCREENSHOTS

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        params = {"format": "png", "captureBeyondViewport": True}
        if clip:
            params["clip"] = dict(clip, scale=1)
        out = SCREENSHOTS / f"{name}.png"
        out.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
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


def test_comparison_page_math_and_fallback_slider(site):
    """The comparison notebook's page offline: MathJax typeset its equations, and the kernel-free
    fallback of each explorer (a to_jshtml animation) has a JavaScript slider that, when a user
    clicks it, shows another frame. Nothing is requested from the network."""
    import time

    dom = site.render(COMPARISON)
    assert "<mjx-container" in dom, "MathJax did not typeset the comparison page"
    assert "$$" not in dom
    assert len(re.findall(r"<input[^>]*type=\"range\"[^>]*anim-slider", dom)) >= 3, \
        "the static fallback animations (with their range sliders) are missing"
    site.screenshot(COMPARISON, "05-comparison")

    page = DevToolsPage(site.chromium)
    try:
        page.goto(site.url(COMPARISON))
        assert page.wait_for("document.querySelectorAll('mjx-container').length > 0"), "no MathJax output"
        page.js("window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : true")
        assert page.wait_for("(() => { const i = document.querySelector('.animation img');"
                             " return !!i && i.src.startsWith('data:image/png'); })()"), \
            "the animation did not show its first frame"
        where = page.js("""(() => {
            const s = document.querySelector('input.anim-slider');
            s.scrollIntoView({block: 'center'});
            const a = s.closest('.animation').getBoundingClientRect();
            window.__frame0 = s.closest('.animation').querySelector('img').src;
            return {value: s.value, max: s.max,
                    clip: {x: a.left + window.scrollX, y: a.top + window.scrollY, width: a.width,
                           height: a.height}};
        })()""")
        assert where["value"] == "0" and int(where["max"]) >= 2, where
        page.screenshot("05-comparison-fallback-first-frame", where["clip"])
        # click the right end of the slider (the last frame). MathJax and the widget snapshot may
        # still move the page around: aim again until the point is on the slider
        for _ in range(20):
            at = page.js("""(() => {
                const s = document.querySelector('input.anim-slider');
                s.scrollIntoView({block: 'center'});
                const r = s.getBoundingClientRect(), x = r.right - 3, y = r.top + r.height / 2;
                return {x: x, y: y, on: document.elementFromPoint(x, y) === s};
            })()""")
            if at["on"]:
                page.click(at["x"], at["y"])
                if page.js("document.querySelector('input.anim-slider').value") != "0":
                    break
            time.sleep(0.25)
        moved = page.js("""(() => {
            const s = document.querySelector('input.anim-slider');
            const img = s.closest('.animation').querySelector('img');
            return {value: s.value, max: s.max, changed: img.src !== window.__frame0,
                    png: img.src.startsWith('data:image/png')};
        })()""")
        assert moved["value"] == moved["max"], f"the click did not move the slider: {moved}"
        assert moved["changed"] and moved["png"], f"moving the slider did not change the frame: {moved}"
        clip = page.js("""(() => {
            const a = document.querySelector('.animation').getBoundingClientRect();
            return {x: a.left + window.scrollX, y: a.top + window.scrollY, width: a.width,
                    height: a.height};
        })()""")
        page.screenshot("05-comparison-fallback-last-frame", clip)
        # the explorers' widget snapshot (sliders and figure, saved with the notebook) is rendered
        # by the offline ipywidgets manager: frozen, but visible
        assert page.wait_for("document.querySelectorAll('.widget-slider').length >= 4"), \
            "the saved widget state of the explorers was not rendered"
        local = ("file:", "data:", "blob:", "about:")  # blob: images of the widget snapshot
        external = [u for u in page.requested_urls() if not u.startswith(local)]
        assert not external, f"the page requested network resources: {external}"
    finally:
        page.close()
