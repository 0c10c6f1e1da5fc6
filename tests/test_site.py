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
COVER = "index.html"


def scripts(dom: str) -> list[str]:
    return re.findall(r"<script[^>]*\ssrc=\"([^\"]+)\"", dom)


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
    dom = site.render("chapters/api/problem.html")
    assert 'id="physgrad.problem.Problem"' in dom, "autodoc did not document physgrad.Problem"
    site.screenshot("chapters/api/problem.html", "api-problem")


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

    def screenshot(self, name: str, clip: dict = None, beyond_viewport: bool = True):
        """Save a PNG to _build/screenshots/<name>.png: the ``clip`` rectangle (page
        coordinates) or, with ``beyond_viewport=False`` and no clip, what the viewport shows."""
        import base64

        from conftest import SCREENSHOTS

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        params = {"format": "png", "captureBeyondViewport": beyond_viewport}
        if clip:
            params["clip"] = dict(clip, scale=1)
        out = SCREENSHOTS / f"{name}.png"
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


def test_comparison_page_math(site):
    """The comparison notebook's page offline: MathJax typeset its equations. (Its kernel-free
    figures and the absence of dead widget controls are checked in tests/test_interactive.py.)"""
    dom = site.render(COMPARISON)
    assert "<mjx-container" in dom, "MathJax did not typeset the comparison page"
    assert "$$" not in dom
    site.screenshot(COMPARISON, "05-comparison")


# --- the cover page --------------------------------------------------------------------------------

def _pages(site) -> list[str]:
    """Every HTML page of the built book (relative paths), the cover first."""
    pages = sorted(str(p.relative_to(site.html)) for p in site.html.rglob("*.html")
                   if "_static" not in p.parts and "_sources" not in p.parts)
    pages.remove(COVER)
    return [COVER, *pages]


def test_cover_page(site):
    """index.html is the book's cover, not a redirect: title, authors, a pitch whose numbers are
    glued from notebooks/cover.ipynb, the teaser figure, start/Binder buttons, audience,
    citation, licence, logo and favicon, and the chapter map as links to every chapter."""
    html = (site.html / COVER).read_text(encoding="utf-8")
    assert 'http-equiv="refresh"' not in html, "index.html is still a redirect"
    dom = site.render(COVER)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "<h1>Inverting Gradients" in dom
    assert "physgrad authors" in text
    # the headline numbers come from the cover notebook's glue (pasted-text spans), not typed
    import json

    nb = json.loads((site.html.parent.parent / "notebooks" / "cover.ipynb").read_text("utf-8"))
    glued = {o["metadata"]["scrapbook"]["name"]: o["data"]["application/papermill.record/text/plain"]
             for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]
             if "scrapbook" in o.get("metadata", {}) and
             "application/papermill.record/text/plain" in o.get("data", {})}
    pasted = re.findall(r'<span class="pasted-text">([^<]*)</span>', dom)
    assert len(pasted) == 3
    assert pasted == [glued["cover-start-loss"].strip("'"), glued["cover-gd-loss"].strip("'"),
                      glued["cover-gd-steps"].strip("'")]
    # teaser figure: an image from the notebook, with a caption and a real alt text
    fig = re.search(r'<figure[^>]*glued-figure[\s\S]*?</figure>', dom)
    assert fig, "no teaser figure"
    img = re.search(r'<img[^>]*src="([^"]+)"[^>]*>', fig.group(0))
    assert img and (site.html / img.group(1)).is_file()
    alt = re.search(r'alt="([^"]*)"', img.group(0)).group(1)
    assert "gradient descent" in alt and not alt.endswith(".png")
    assert "<figcaption" in fig.group(0)
    # buttons, audience, citation, licence
    assert re.search(r'href="chapters/01-overview.html"[^>]*>[\s\S]{0,200}Start reading', dom)
    assert "https://mybinder.org/v2/gh/" in dom
    for words in ("Who it is for", "Prerequisites", "How to cite", "physgrad2026inverting", "MIT", "CC-BY-4.0"):
        assert words in text, words
    # logo and favicon exist in the build
    for rel in ("logo.svg", "favicon.svg"):
        assert re.search(rf'(src|href)="[^"]*{rel}"', dom), rel
    assert re.search(r'<link rel="icon" href="_static/favicon.svg"', html)
    # the chapter map links every chapter and notebook page
    for page in _pages(site):
        if page.startswith(("chapters/0", "notebooks/")):
            assert f'href="{page}"' in dom, f"the cover does not link {page}"
    site.screenshot(COVER, "after-landing", size="1400,1000")


# --- navigation: the ☰ and page-contents buttons --------------------------------------------------

def _visible_button(page, selector: str) -> dict:
    """Centre of the visible button matching ``selector`` (the theme also has hidden ones)."""
    return page.js(f"""(() => {{
        for (const b of document.querySelectorAll({selector!r})) {{
            const r = b.getBoundingClientRect();
            if (r.width > 0 && r.height > 0 && getComputedStyle(b).visibility !== 'hidden')
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
        }}
        return null;
    }})()""")


DRAWER_STATE = """(() => {
    const d = document.querySelector('#pst-%s-sidebar-modal');
    if (!d || !d.open) return {open: false};
    const link = [...d.querySelectorAll('a')].find(a => a.getBoundingClientRect().width > 0);
    const r = d.getBoundingClientRect();
    return {open: true, width: r.width, height: r.height, link: link ? link.textContent.trim() : null,
            inside: !!link && link.getBoundingClientRect().right <= innerWidth
                    && link.getBoundingClientRect().top >= 0};
})()"""


def test_phone_navigation_drawer_opens(site):
    """On a phone (390×844), tapping ☰ opens the drawer with the book's table of contents, and
    the page-contents button opens the list of the page's sections (pydata-sphinx-theme #2451)."""
    page = DevToolsPage(site.chromium, size=(390, 844))
    try:
        page.emulate_phone()
        page.goto(site.url("chapters/03-newton.html"))
        page.settle()
        assert page.js("innerWidth") == 390
        assert page.js(DRAWER_STATE % "primary") == {"open": False}
        burger = _visible_button(page, ".primary-toggle")
        assert burger, "no visible ☰ button on the phone layout"
        page.tap(burger["x"], burger["y"])
        assert page.wait_for(f"{DRAWER_STATE % 'primary'}.open", 10), "tapping ☰ opened nothing"
        state = page.js(DRAWER_STATE % "primary")
        assert state["inside"] and state["width"] > 200 and state["height"] > 400, state
        toc = page.js("[...document.querySelectorAll('#pst-primary-sidebar-modal a')]"
                      ".map(a => a.getAttribute('href'))")
        assert any("02-gradient-descent.html" in h for h in toc), toc
        page.screenshot("after-phone-drawer-open", beyond_viewport=False)
        page.send("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape",
                  windowsVirtualKeyCode=27)
        page.send("Input.dispatchKeyEvent", type="keyUp", key="Escape", code="Escape",
                  windowsVirtualKeyCode=27)
        assert page.wait_for(f"!{DRAWER_STATE % 'primary'}.open", 10)
        contents = _visible_button(page, ".secondary-toggle")
        assert contents, "no visible page-contents button on the phone layout"
        page.tap(contents["x"], contents["y"])
        assert page.wait_for(f"{DRAWER_STATE % 'secondary'}.open", 10), \
            "the page-contents button opened nothing"
        state = page.js(DRAWER_STATE % "secondary")
        assert state["inside"], state
        page.screenshot("after-phone-page-contents-open", beyond_viewport=False)
        assert page.problems() == []
    finally:
        page.close()


def test_desktop_sidebar_toggle_and_single_header(site):
    """On a desktop, ☰ collapses and restores the sidebar; there is one top bar (the theme's
    second, nearly empty header with a duplicate search box is hidden)."""
    page = DevToolsPage(site.chromium, size=(1400, 900))
    try:
        page.goto(site.url("chapters/03-newton.html"))
        page.settle()
        shown = "(() => { const s = document.querySelector('#pst-primary-sidebar');" \
                " return s.getBoundingClientRect().width > 100 &&" \
                " !s.classList.contains('pst-sidebar-hidden'); })()"
        assert page.js(shown)
        assert page.js("document.querySelector('#pst-header').getBoundingClientRect().height") == 0
        visible_search = page.js("[...document.querySelectorAll('.search-button-field, .search-button')]"
                                 ".filter(b => b.getBoundingClientRect().width > 0).length")
        assert visible_search <= 2  # the sidebar's search field and the article header's icon
        burger = _visible_button(page, ".primary-toggle")
        page.click(burger["x"], burger["y"])
        assert page.wait_for(f"!{shown}", 5), "☰ did not collapse the sidebar"
        page.click(burger["x"], burger["y"])
        assert page.wait_for(shown, 5), "☰ did not bring the sidebar back"
        assert page.problems() == []
    finally:
        page.close()


# --- every page: no console error, no failed request ------------------------------------------------

def test_every_page_has_no_console_error_and_no_failed_request(site):
    """Open EVERY built page (offline, off-site requests routed to a dead proxy) and collect
    console errors, uncaught exceptions and failed requests (missing files, 404s, blocked
    off-site requests). There must be none."""
    page = DevToolsPage(site.chromium, size=(1400, 900))
    found = {}
    try:
        pages = _pages(site)
        assert len(pages) >= 30
        for rel in pages:
            page.goto(site.url(rel))
            page.settle()
            if rel == COMPARISON:  # the widget manager renders late and loads its fonts
                page.wait_for("document.querySelectorAll('.widget-slider').length > 0", 20)
                import time

                time.sleep(1)
            problems = page.problems()
            off_site = [u for u in page.requested_urls()
                        if not u.startswith(("file:", "data:", "blob:", "about:"))]
            problems += [f"off-site request: {u}" for u in off_site]
            if problems:
                found[rel] = problems
        print(f"{len(pages)} pages opened; console errors and failed requests: "
              f"{sum(len(v) for v in found.values())}")
    finally:
        page.close()
    assert not found, "\n".join(f"{p}: {v}" for p, v in found.items())


# --- page content the reader sees --------------------------------------------------------------------

def test_titles_are_unicode_everywhere(site):
    """No raw TeX in browser-tab titles, link texts, the sidebar or the search index."""
    bad = []
    for rel in _pages(site):
        html = (site.html / rel).read_text(encoding="utf-8")
        title = re.search(r"<title>([\s\S]*?)</title>", html).group(1)
        # links to other pages (sidebar, {doc} links); in-page section links are typeset by
        # MathJax with the page
        links = re.findall(r'<a class="reference internal" href="(?!#)[^"]*"[^>]*>([\s\S]*?)</a>', html)
        for where, text in [("title", title)] + [("link", x) for x in links]:
            plain = re.sub(r"<[^>]+>", "", text)
            if re.search(r"\\\(|\\\)|\\[a-zA-Z]+|\$", plain):
                bad.append(f"{rel} {where}: {plain.strip()[:80]}")
    index = (site.html / "searchindex.js").read_text(encoding="utf-8")
    titles = re.search(r'"titles":\s*\[(".*?)\]', index).group(1)
    assert "\\\\(" not in titles and "\\\\eta" not in titles, titles[:500]
    assert "step size η against scale c" in (site.html / COMPARISON).read_text("utf-8")
    assert not bad, "\n".join(bad[:20])


def test_images_have_alt_text(site):
    bad = []
    for rel in _pages(site):
        html = (site.html / rel).read_text(encoding="utf-8")
        for img in re.findall(r"<img[^>]*>", html):
            alt = re.search(r'alt="([^"]*)"', img)
            if not alt or not alt.group(1).strip() or re.search(r"\.(png|svg|jpe?g|gif)$", alt.group(1)):
                bad.append(f"{rel}: {img[:120]}")
    assert not bad, "\n".join(bad[:20])


def test_inline_scripts_once_and_streams_merged(site):
    for rel in _pages(site):
        html = (site.html / rel).read_text(encoding="utf-8")
        assert html.count("const THEBE_JS_URL") <= 1, rel
        assert html.count("var togglebuttonSelector") <= 1, rel
        # nb_merge_streams: no cell shows two stdout boxes in a row
        assert not re.search(r'</pre></div>\s*</div>\s*<div class="output stream', html), rel
        assert "Text(0.5, 0.98" not in html, rel


def test_api_pages_link_equations_and_render_math(site):
    """The API reference is split per module; a docstring's "eq. ``pg-update``" is a link to
    the numbered equation in its chapter, and docstring math is typeset."""
    api = site.html / "chapters" / "api"
    modules = sorted(p.name for p in api.glob("*.html"))
    assert len(modules) >= 12, modules
    assert (site.html / "chapters" / "api.html").stat().st_size < 200_000
    updates = (api / "updates.html").read_text(encoding="utf-8")
    link = re.search(r'<a class="reference internal" href="\.\./05-inverse-simulators\.html#'
                     r'equation-pg-update">\((\d+)\)</a>', updates)
    assert link, "eq. pg-update is not a linked equation number on the updates page"
    chapter = (site.html / "chapters" / "05-inverse-simulators.html").read_text(encoding="utf-8")
    assert re.search(r'id="equation-pg-update"[\s\S]{0,300}\(' + link.group(1) + r'\)', chapter)
    for rel in api.glob("*.html"):
        html = rel.read_text(encoding="utf-8")
        leftover = re.findall(r"([Ee]qs?\.\s+<code[^>]*><span class=\"pre\">[a-z0-9-]+</span>|"
                              r"<span class=\"pre\">[a-z0-9]+-[a-z0-9-]+</span></code>\s+\(ch\.)", html)
        assert not leftover, (rel.name, leftover)
    dom = site.render("chapters/api/nn.html")
    assert "<mjx-container" in dom, "docstring math is not typeset"
    site.screenshot("chapters/api/updates.html", "after-api-updates", size="1400,1400")


# --- before/after screenshots for the review -----------------------------------------------------------

def test_review_screenshots(site):
    """Screenshots for the closing note in _build/screenshots/: the landing page, a page with a
    three-panel figure (chapter 2's comparison) and the phone drawer; "before-*" from a copy of
    an earlier build in _build/html-before/ when one exists."""
    from conftest import HTML_BEFORE as before, SCREENSHOTS

    fig_page = "notebooks/02-gradient-descent.html"
    builds = [("after", site.html)] + ([("before", before)] if before.is_dir() else [])
    for tag, root in builds:
        page = DevToolsPage(site.chromium, size=(1400, 1000))
        try:
            page.goto((root / "index.html").as_uri())
            page.settle()
            page.js("new Promise(r => setTimeout(r, 1500))")  # the redirect of the old build
            page.settle()
            page.screenshot(f"{tag}-landing", beyond_viewport=False)
            page.goto((root / fig_page).as_uri())
            page.settle()
            clip = page.js("""(() => {
                // chapter 2's comparison of two GD runs (x-space, y-space, loss), named
                // nb-fig-gd-toy in the notebook; else the widest image of the page
                let fig = document.getElementById('nb-fig-gd-toy')
                          || document.getElementById('fig-gd-toy');
                if (!fig) {
                    const imgs = [...document.querySelectorAll('.cell_output img, figure img')];
                    fig = imgs.sort((a, b) => b.naturalWidth / b.naturalHeight
                                              - a.naturalWidth / a.naturalHeight)[0];
                }
                const box = (fig.closest('figure') || fig).getBoundingClientRect();
                return {x: box.left + scrollX - 10, y: box.top + scrollY - 10,
                        width: box.width + 20, height: box.height + 20};
            })()""")
            page.screenshot(f"{tag}-three-panel-figure", clip)
        finally:
            page.close()
        phone = DevToolsPage(site.chromium, size=(390, 844))
        try:
            phone.emulate_phone()
            phone.goto((root / "chapters/03-newton.html").as_uri())
            phone.settle()
            burger = _visible_button(phone, ".primary-toggle")
            phone.tap(burger["x"], burger["y"])
            phone.wait_for(f"{DRAWER_STATE % 'primary'}.open", 5)
            phone.js("new Promise(r => setTimeout(r, 500))")
            phone.screenshot(f"{tag}-phone-drawer", beyond_viewport=False)
        finally:
            phone.close()
    for name in ("after-landing", "after-three-panel-figure", "after-phone-drawer"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 5000


def test_code_of_88_columns_fits_the_column(site):
    """A code line of up to 88 characters (the book's limit) fits the desktop text column without
    a horizontal scrollbar, and long printed output wraps instead of hiding numbers."""
    page = DevToolsPage(site.chromium, size=(1400, 900))
    try:
        page.goto(site.url("notebooks/03-newton.html"))
        page.settle()
        blocks = page.js("""[...document.querySelectorAll('div.cell_input pre')].map(p => ({
            longest: Math.max(...p.textContent.split('\\n').map(l => l.length)),
            overflow: p.scrollWidth - p.clientWidth}))""")
        fitting = [b for b in blocks if b["longest"] <= 88]
        assert fitting, blocks
        assert all(b["overflow"] <= 1 for b in fitting), fitting
        wrap = page.js("[...document.querySelectorAll('div.cell_output pre')]"
                       ".map(p => getComputedStyle(p).whiteSpace)")
        assert wrap and set(wrap) == {"pre-wrap"}, set(wrap)
    finally:
        page.close()


def test_phone_tables_scroll_inside_their_box(site):
    """On a phone (390 px) the wide tables of notebook output (chapter 7's benchmark table, the
    benchmark appendix's limit, scaling and GPU tables, chapter 8's measured-vs-published table)
    scroll sideways inside their own box:
    the page itself never becomes wider than the screen, and a number keeps its unit on its line."""
    page = DevToolsPage(site.chromium, size=(390, 844))
    try:
        page.emulate_phone()
        for url in ("chapters/07-pde.html", "chapters/appendix-benchmarks.html",
                    "chapters/08-networks.html"):
            page.goto(site.url(url))
            page.settle()
            assert page.js("innerWidth") == 390
            tables = page.js("""[...document.querySelectorAll('div.output.text_html > table')].map(t => ({
                scroll: t.scrollWidth, box: t.clientWidth, right: t.getBoundingClientRect().right,
                overflow: getComputedStyle(t).overflowX}))""")
            assert tables, url
            assert all(t["right"] <= 391 and t["overflow"] == "auto" for t in tables), (url, tables)
            assert page.js("document.documentElement.scrollWidth") <= 391, url
            if url.startswith("chapters/appendix"):
                assert any(t["scroll"] > t["box"] for t in tables)  # the wide ones do scroll
                units = page.js("""[...document.querySelectorAll('table.numbers td')]
                    .filter(td => / ms$/.test(td.textContent))
                    .map(td => td.getBoundingClientRect().height)""")
                assert units and max(units) < 1.6 * min(units), units  # one line each
                page.js("document.getElementById('on-a-gpu').scrollIntoView()")
                page.screenshot("after-phone-ch7-gpu-table", beyond_viewport=False)
    finally:
        page.close()
