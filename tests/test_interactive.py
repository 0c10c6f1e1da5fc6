"""Kernel-free interactive figures (physgrad.interactive) in the built book, in headless Chromium.

Every figure's sliders are moved through their DOM inputs (as a reader's drag does: an ``input``
event), and the test asserts that the drawn marks change. For chapter 2 (GD) and chapter 5 (all
methods) the drawn trajectory is read back from the Vega scenegraph and compared with a fresh
``physgrad`` run for those slider values. The network is routed to a dead proxy (conftest) and
every request must be a local file. Screenshots of each figure before and after a slider move go
to _build/screenshots/ix-*.png; page weights and redraw times go to _build/interactive.json
(measurements, reported, not asserted).

The layout tests at the end need no book build: they draw small versions of three figures on a
page built in a temporary folder (vendored Vega, assets/sliders.js and .css, a 790 px column)
and check the stacked layout at 390×844, the side-by-side layout at 1440×900, a resize, dark
mode and the contrast of the line colours.
"""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import HTML, ROOT, SCREENSHOTS
from test_site import DevToolsPage

from physgrad.interactive import COMPARISON_METHODS
from physgrad.problems.toy import toy, toy_x0
from physgrad.runs import learning_rate, run_method

CHAPTER_FIGURES = {
    "chapters/02-gradient-descent.html": ["pgv-ch2-gd"],
    "chapters/03-newton.html": ["pgv-ch3-newton-bfgs"],
    "chapters/04-inverse-gradients.html": ["pgv-ch4-lm"],
    "chapters/05-inverse-simulators.html": ["pgv-ch5-comparison"],
    "chapters/06-deep-dive.html": ["pgv-ch6-slope"],
    "chapters/07-pde.html": ["pgv-ch7-heat"],
    "chapters/08-networks.html": ["pgv-ch8-kappa"],
}
PAGES = {
    **CHAPTER_FIGURES,
    "notebooks/explorables.html": [f for figs in CHAPTER_FIGURES.values() for f in figs],
    "notebooks/05-comparison.html": ["pgv-ch5-comparison", "pgv-units", "pgv-rosenbrock"],
}
LOCAL = ("file:", "data:", "blob:", "about:")
RESULTS = ROOT / "_build" / "interactive.json"

# JavaScript helpers, installed once per page
HELPERS = r"""
window.__ix = {
  view: function(id) { return window.physgradViews[id]; },
  // the data of every drawn item of the marks named <prefix>*_marks (all marks when prefix = '')
  drawn: function(id, prefix) {
    var out = [];
    (function walk(n) {
      if (!n) return;
      if (n.marktype && n.name && n.name.slice(-6) === '_marks' && n.name.indexOf(prefix) === 0)
        n.items.forEach(function(it) { out.push(it.datum); });
      (n.items || []).forEach(function(it) { (it.items || []).forEach(walk); });
    })(window.physgradViews[id].scenegraph().root);
    return out;
  },
  signature: function(id) {
    return JSON.stringify(window.__ix.drawn(id, '').map(function(d) {
      return [d.s, d.k, d.x, d.y, d.L, d.a, d.b];
    }));
  },
  // move one slider the way a drag does (an input event) and wait for the redraw
  move: async function(id, name, value) {
    var inp = document.getElementById(id).querySelector('input[name="' + name + '"]');
    inp.value = String(value);
    var t0 = performance.now();
    inp.dispatchEvent(new Event('input', {bubbles: true}));
    await window.physgradViews[id].runAsync();
    return {ms: performance.now() - t0, value: window.physgradViews[id].signal(name)};
  },
  sliders: function(id) {
    return Array.from(document.getElementById(id).querySelectorAll('input[type=range]')).map(
      function(i) { return {name: i.name, min: +i.min, max: +i.max, step: +i.step, value: +i.value}; });
  },
  clip: function(id) {
    // page top: the sticky header then covers nothing below it in a full-page capture
    window.scrollTo(0, 0);
    var el = document.getElementById(id), r = el.getBoundingClientRect();
    return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: Math.max(r.width, 10),
            height: Math.max(r.height, 10)};
  }
};
true
"""


def _open(site, page: str, figures) -> DevToolsPage:
    p = DevToolsPage(site.chromium, size=(1280, 1400))
    p.goto(site.url(page))
    ids = json.dumps(list(figures))
    ok = p.wait_for(f"{ids}.every(function(i) {{ var e = document.getElementById(i);"
                    " return e && e.getAttribute('data-ready') === '1'; })", timeout=60)
    if not ok:
        msgs = p.js(f"{ids}.map(function(i) {{ var e = document.getElementById(i);"
                    " return e ? e.querySelector('.pgv-msg').textContent : 'missing'; })")
        p.close()
        pytest.fail(f"{page}: interactive figures not drawn: {msgs}")
    assert p.js(HELPERS)
    return p


def _no_external(p: DevToolsPage, page: str):
    urls = p.requested_urls()
    external = [u for u in urls if not u.startswith(LOCAL)]
    assert not external, f"{page} requested network resources: {external}"
    vega = [u for u in urls if u.endswith("_static/vega/vega.min.js")]
    assert vega and all(u.startswith("file:") for u in vega), f"{page}: vendored Vega not loaded"


def _record(key: str, value):
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True))


@pytest.mark.parametrize("page", list(PAGES))
def test_every_slider_redraws(site, page):
    """Each slider of each figure on the page changes what is drawn; nothing leaves the machine."""
    figures = PAGES[page]
    p = _open(site, page, figures)
    stem = page.split("/")[-1].removesuffix(".html")
    timings = {}
    try:
        for fid in figures:
            sliders = p.js(f"__ix.sliders('{fid}')")
            assert len(sliders) >= 2, f"{fid}: expected at least two sliders, got {sliders}"
            before = p.js(f"__ix.signature('{fid}')")
            assert len(before) > 100, f"{fid}: nothing drawn"
            p.screenshot(f"ix-{stem}-{fid}-before", p.js(f"__ix.clip('{fid}')"))
            ms = []
            for s in sliders:
                for target in (s["max"] if s["value"] != s["max"] else s["min"], s["value"]):
                    sig0 = p.js(f"__ix.signature('{fid}')")
                    moved = p.js(f"__ix.move('{fid}', '{s['name']}', {target})")
                    assert abs(moved["value"] - target) < 1e-9, (fid, s, moved)
                    sig1 = p.js(f"__ix.signature('{fid}')")
                    assert sig1 != sig0, f"{fid}: moving {s['name']} to {target} changed nothing"
                    ms.append(moved["ms"])
            # both sliders away from their start at once, then the after-screenshot
            for s in sliders[:2]:
                p.js(f"__ix.move('{fid}', '{s['name']}', {s['max']})")
            assert p.js(f"__ix.signature('{fid}')") != before
            p.screenshot(f"ix-{stem}-{fid}-after", p.js(f"__ix.clip('{fid}')"))
            timings[fid] = {"median_ms": statistics.median(ms), "max_ms": max(ms), "moves": len(ms)}
        _no_external(p, page)
    finally:
        p.close()
    html = (HTML / page).read_bytes()
    vendored = sum(f.stat().st_size for f in (HTML / "_static" / "vega").glob("*.js"))
    _record(page, {"html_bytes": len(html), "vega_js_bytes": vendored, "redraw": timings})
    assert len(html) + vendored < 5_000_000, f"{page} weighs {len(html) + vendored} bytes"


def _trajectories(p: DevToolsPage, fid: str, mark: str) -> dict:
    pts = p.js(f"__ix.drawn('{fid}', '{mark}').map(function(d) {{ return [d.s, d.k, d.x, d.y]; }})")
    out = {}
    for s, k, x, y in pts:
        out.setdefault(s, {})[k] = (x, y)
    return {s: [v[k] for k in sorted(v)] for s, v in out.items()}


def _assert_close(drawn, xs, what):
    ref = xs.tolist()
    assert len(drawn) == len(ref), f"{what}: {len(drawn)} points drawn, physgrad has {len(ref)}"
    for k, ((x, y), (rx, ry)) in enumerate(zip(drawn, ref)):
        for u, v in ((x, rx), (y, ry)):
            assert abs(u - v) <= 1e-9 * max(1.0, abs(v)), f"{what}, iterate {k}: {u} vs {v}"


@pytest.mark.parametrize("page", ["chapters/02-gradient-descent.html", "notebooks/explorables.html"])
def test_gd_trajectory_equals_physgrad(site, page):
    """Chapter 2: at c = 10^0.5, η = 10^-2.5 the drawn GD path is physgrad's, to 1e-9."""
    p = _open(site, page, ["pgv-ch2-gd"])
    try:
        for name, value in (("lc", 0.5), ("le", -2.5)):
            p.js(f"__ix.move('pgv-ch2-gd', '{name}', {value})")
        drawn = _trajectories(p, "pgv-ch2-gd", "gd_x")
        run = run_method(toy(10 ** 0.5), toy_x0(), "gd", 30, 10 ** -2.5)
        assert list(drawn) == ["GD"]
        _assert_close(drawn["GD"], run.xs, "GD")
        _no_external(p, page)
    finally:
        p.close()


@pytest.mark.parametrize("page", ["chapters/05-inverse-simulators.html",
                                  "notebooks/05-comparison.html"])
def test_comparison_trajectories_equal_physgrad(site, page):
    """Chapter 5: with all three sliders moved, every method's drawn path is physgrad's."""
    fid = "pgv-ch5-comparison"
    p = _open(site, page, [fid])
    try:
        lc, le, eta = -0.5, -1.0, 0.7
        for name, value in (("lc", lc), ("le", le), ("eta", eta)):
            p.js(f"__ix.move('{fid}', '{name}', {value})")
        drawn = _trajectories(p, fid, "cmp_x")
        assert len(drawn) == len(COMPARISON_METHODS)
        prob = toy(10 ** lc)
        for m, opt in COMPARISON_METHODS.items():
            step = 10 ** le if learning_rate(m) else eta
            run = run_method(prob, toy_x0(), m, 20, step, **opt)
            label = {"gd": "GD", "adam": "Adam", "bfgs": "BFGS", "newton": "Newton", "ig": "IG",
                     "pg": "PG", "hig": "HIG"}[m]
            _assert_close(drawn[label], run.xs, f"{m} at c = {10 ** lc:g}")
        _no_external(p, page)
    finally:
        p.close()


def test_comparison_page_shows_no_dead_controls(site):
    """On the static comparison page the ipywidgets explorers (which need a kernel) are not
    shown; the kernel-free figures are, with working sliders."""
    page = "notebooks/05-comparison.html"
    p = _open(site, page, PAGES[page])
    try:
        visible = p.js("""Array.from(document.querySelectorAll(
            '.widget-slider, .jupyter-widgets input, .widget-inline-hbox')).filter(
            function(e) { return e.offsetParent !== null; }).length""")
        assert visible == 0, f"{visible} frozen ipywidgets controls are visible on {page}"
        assert p.js("document.querySelectorAll('.pgv input[type=range]').length") >= 7
        _no_external(p, page)
    finally:
        p.close()


def test_phone_width_keeps_sliders_reachable(site):
    """On a 390 px phone screen the chapter-2 figure stays inside the column (it scrolls inside
    its own box) and its sliders are on screen."""
    page = "chapters/02-gradient-descent.html"
    p = DevToolsPage(site.chromium, size=(390, 844))
    try:
        p.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2,
               mobile=True)
        p.goto(site.url(page))
        assert p.wait_for("(function(){var e=document.getElementById('pgv-ch2-gd');"
                          "return e && e.getAttribute('data-ready')==='1';})()", timeout=60)
        r = p.js("""(function(){var e=document.getElementById('pgv-ch2-gd');
            e.scrollIntoView({block:'start'});
            var ins=Array.from(e.querySelectorAll('input[type=range]')).map(function(i){
              return i.getBoundingClientRect().right;});
            return {width: window.innerWidth, box: e.getBoundingClientRect().right,
                    inner: e.scrollWidth, inputs: ins};})()""")
        assert r["width"] <= 400, r
        assert r["box"] <= r["width"], f"the figure box sticks out of the screen: {r}"
        assert r["inputs"] and max(r["inputs"]) <= r["width"], r
        clip = p.js("""(function(){window.scrollTo(0, 0);
            var r=document.getElementById('pgv-ch2-gd').getBoundingClientRect();
            return {x: 0, y: r.top + window.scrollY - 10, width: window.innerWidth,
                    height: r.height + 20};})()""")
        p.screenshot("ix-phone-02-gradient-descent", clip)
    finally:
        p.close()


def test_screenshots_written():
    """Runs last (file order): the before/after screenshots exist."""
    shots = sorted(SCREENSHOTS.glob("ix-*-after.png")) if SCREENSHOTS.is_dir() else []
    if not shots:
        pytest.skip("no browser run in this session")
    assert all(s.stat().st_size > 1000 for s in shots)


# ------------------------------------------------------------------------------------------
# Layout, colours and themes on a small page built here from small grids (no book build):
# the vendored Vega, assets/sliders.js and .css in _static/, and a 790 px text column as in
# the book.

LAYOUT_HELPERS = r"""
window.__lay = {
  // absolute page box of the plot area holding the mark <name>_marks, and of every legend
  boxes: function(id) {
    var view = window.physgradViews[id], o = view.origin();
    var c = document.getElementById(id).querySelector('canvas').getBoundingClientRect();
    var panels = {}, legends = [];
    (function walk(mark, ox, oy, grp) {
      (mark.items || []).forEach(function(it) {
        if (mark.role === 'legend') {
          legends.push({left: c.left + ox + it.bounds.x1, right: c.left + ox + it.bounds.x2,
                        top: c.top + oy + it.bounds.y1, bottom: c.top + oy + it.bounds.y2});
          return;
        }
        if (mark.name && mark.name.slice(-6) === '_marks' && grp)
          panels[mark.name.slice(0, -6)] = {left: c.left + ox, top: c.top + oy,
            right: c.left + ox + grp.width, bottom: c.top + oy + grp.height};
        if (mark.marktype === 'group')
          (it.items || []).forEach(function(m) { walk(m, ox + (it.x || 0), oy + (it.y || 0), it); });
      });
    })(view.scenegraph().root, o[0], o[1], null);
    var el = document.getElementById(id);
    return {panels: panels, legends: legends, canvas: {left: c.left, right: c.right},
            layout: el.getAttribute('data-layout'), box: el.clientWidth,
            scroll: el.scrollWidth, width: window.innerWidth};
  }
};
true
"""
SMALL = {"pgv-ch2-gd": ("gd_x", "gd_L", "gd_map"), "pgv-ch5-comparison": ("cmp_x", "cmp_L"),
         "pgv-ch7-heat": ("heat", "heat_map")}


def _small_figures():
    from physgrad import interactive as ix

    return [ix.gd_figure(steps=10, lc=(-1.0, 1.0, 0.5), le=(-3.0, 0.0, 0.5)),
            ix.comparison_figure(steps=8, lc=(-1.0, 1.0, 1.0), le=(-3.0, -1.0, 1.0),
                                 eta=(0.5, 1.0, 0.5)),
            ix.heat_figure(n=16, leps=(-4.0, 0.0, 2.0), lsig=(-4.0, -2.0, 2.0))]


@pytest.fixture(scope="module")
def small_page(tmp_path_factory):
    import shutil

    from conftest import find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not found (apt-get install -y chromium)")
    out = tmp_path_factory.mktemp("sliders")
    (out / "_static" / "vega").mkdir(parents=True)
    for f in (ROOT / "vendor" / "vega").glob("*.js"):
        shutil.copy(f, out / "_static" / "vega" / f.name)
    for name in ("sliders.js", "sliders.css"):
        shutil.copy(ROOT / "assets" / name, out / "_static" / name)
    body = "\n".join(f.html() for f in _small_figures())
    page = out / "page.html"
    page.write_text(
        '<!DOCTYPE html><html lang="en" data-content_root="./" data-theme="light"><head>'
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width, '
        'initial-scale=1"><style>body{margin:0;font-family:sans-serif}'
        'article{max-width:790px;margin:0 auto;padding:0 16px}</style></head><body><article>'
        f"{body}</article></body></html>", encoding="utf-8")
    return chromium, page.as_uri()


def _open_small(small_page, width, height, mobile):
    chromium, url = small_page
    p = DevToolsPage(chromium, size=(width, height))
    p.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
           deviceScaleFactor=2 if mobile else 1, mobile=mobile)
    p.goto(url)
    ids = json.dumps(list(SMALL))
    ok = p.wait_for(f"{ids}.every(function(i) {{ var e = document.getElementById(i);"
                    " return e && e.getAttribute('data-ready') === '1'; })", timeout=60)
    if not ok:
        p.close()
        pytest.fail("slider figures not drawn on the small page")
    assert p.js(LAYOUT_HELPERS)
    return p


def test_phone_figures_fit_the_screen(small_page):
    """At 390×844 every slider figure is stacked (narrow layout), and its plots and legends lie
    inside the screen: nothing scrolls sideways."""
    p = _open_small(small_page, 390, 844, True)
    try:
        for fid, names in SMALL.items():
            b = p.js(f"__lay.boxes('{fid}')")
            assert b["layout"] == "narrow", (fid, b["layout"])
            assert b["scroll"] <= b["box"] + 1, f"{fid} scrolls sideways: {b}"
            assert 0 <= b["canvas"]["left"] and b["canvas"]["right"] <= b["width"], (fid, b)
            assert set(names) <= set(b["panels"]), (fid, sorted(b["panels"]))
            assert b["legends"], f"{fid}: no legend drawn"
            for what in [*(b["panels"][n] for n in names), *b["legends"]]:
                assert 0 <= what["left"] and what["right"] <= b["width"], (fid, what, b["width"])
            tops = [b["panels"][n]["top"] for n in names]
            assert tops == sorted(tops) and len(set(tops)) == len(tops), f"{fid}: not stacked"
            for leg in b["legends"]:  # every legend below the top of the first plot
                assert leg["top"] >= b["panels"][names[0]]["top"] - 40, (fid, leg)
        p.screenshot("ix-small-phone", {"x": 0, "y": 0, "width": 390,
                                          "height": p.js("document.body.scrollHeight")})
    finally:
        p.close()


def test_desktop_panels_side_by_side(small_page):
    """At 1440×900 the paths and the loss panel (chapters 2 and 5) and the reconstruction and
    its error map (chapter 7) sit side by side and together use most of the 790 px column."""
    p = _open_small(small_page, 1440, 900, False)
    try:
        for fid, names in SMALL.items():
            b = p.js(f"__lay.boxes('{fid}')")
            assert b["layout"] == "wide", (fid, b["layout"])
            left, right = b["panels"][names[0]], b["panels"][names[1]]
            assert right["left"] >= left["right"], f"{fid}: {names[:2]} not side by side"
            assert abs(right["top"] - left["top"]) < 2, (fid, left, right)
            assert b["canvas"]["right"] - b["canvas"]["left"] <= b["box"] + 1, (fid, b)
            used = right["right"] - left["left"]
            assert used >= 0.7 * b["box"], f"{fid} uses {used:.0f} of {b['box']} px"
        p.screenshot("ix-small-desktop", {"x": 0, "y": 0, "width": 1440,
                                            "height": p.js("document.body.scrollHeight")})
    finally:
        p.close()


def test_resize_and_dark_mode_redraw_with_the_same_sliders(small_page):
    """Narrowing the window re-chooses the stacked layout and keeps the slider values; switching
    the page to dark mode (data-theme on <html>) redraws on the dark background."""
    p = _open_small(small_page, 1440, 900, False)
    try:
        fid = "pgv-ch2-gd"
        p.js(f"""(function(){{var i=document.getElementById('{fid}').querySelector(
              'input[name="lc"]'); i.value='0.5'; i.dispatchEvent(new Event('input',
              {{bubbles:true}})); return true;}})()""")
        assert p.wait_for(f"physgradViews['{fid}'].signal('lc') === 0.5")
        p.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=1,
               mobile=True)
        assert p.wait_for(f"document.getElementById('{fid}').getAttribute('data-layout')"
                          " === 'narrow'", timeout=20)
        assert p.wait_for(f"physgradViews['{fid}'].signal('lc') === 0.5", timeout=10)
        assert p.js(f"document.getElementById('{fid}').querySelector('input[name=\"lc\"]')"
                    ".value") == "0.5"
        assert p.js(f"physgradViews['{fid}'].background()") == "#ffffff"
        p.js("document.documentElement.setAttribute('data-theme', 'dark'); true")
        assert p.wait_for(f"physgradViews['{fid}'].background() === '#14181e'", timeout=20)
        assert p.js(f"physgradViews['{fid}'].signal('lc')") == 0.5
    finally:
        p.close()


def test_line_colours_are_legible_in_both_themes():
    """Every colour a figure draws its data with (#rrggbb in its panels) reaches 3:1 against
    the page background of its theme, and the methods of one family share a dash pattern."""
    import re as _re

    from physgrad import interactive as ix

    fig = ix.comparison_figure(steps=3, lc=(0.0, 1.0, 1.0), le=(-2.0, -1.0, 1.0),
                               eta=(0.5, 0.6, 0.1))
    for theme, bg in ix.BACKGROUND.items():
        text = json.dumps(fig.layout("wide", theme)["vconcat"])
        colours = set(_re.findall(r'"(#[0-9a-f]{6})"', text)) - {bg}
        assert len(colours) >= 7
        for c in colours:
            assert ix.contrast(c, bg) >= 3.0 - 1e-9, (theme, c, ix.contrast(c, bg))
    enc = fig.layout()["vconcat"][0]["hconcat"][0]["layer"][0]["encoding"]
    dash = dict(zip(enc["strokeDash"]["scale"]["domain"], enc["strokeDash"]["scale"]["range"]))
    assert dash["IG"] == dash["PG"] == dash["HIG"] != dash["Newton"] == dash["BFGS"]
    assert dash["GD"] == dash["Adam"] not in (dash["IG"], dash["Newton"])
    assert ix.legible("#f28e1c", "#ffffff") != "#f28e1c"  # IG's orange is 2.4:1 on white
