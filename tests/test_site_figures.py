"""Browser checks of the book's figures (chapters 1-6 and the cover), in headless Chromium.

Per-chapter numbers that match the sidebar, one number for a figure shown on a chapter page and
on its notebook page, captions as TeX-free alt text, a tap that opens the full-size image, and
multi-panel figures stacked in one column on a phone. Uses the ``site`` fixture of
tests/conftest.py (a strict build, rebuilt when a source is newer).
"""

import re

from test_site import DevToolsPage

CHAPTERS = ["chapters/01-overview.html", "chapters/02-gradient-descent.html",
            "chapters/03-newton.html", "chapters/04-inverse-gradients.html",
            "chapters/05-inverse-simulators.html", "chapters/06-deep-dive.html"]

FIGURES = """(() => [...document.querySelectorAll('figure')].map(f => {
    const num = f.querySelector('.caption-number');
    const imgs = [...f.querySelectorAll('img')].filter(i => i.getBoundingClientRect().width > 0);
    return {id: f.id, number: num ? num.textContent.trim() : null,
            alt: imgs.map(i => i.alt), links: imgs.map(i => i.closest('a') && i.closest('a').href),
            widths: imgs.map(i => i.getBoundingClientRect().width),
            right: Math.max(0, ...imgs.map(i => i.getBoundingClientRect().right)),
            src: imgs.map(i => i.currentSrc)};
}))()"""


def _figures(site, page, phone=False):
    tab = DevToolsPage(site.chromium, size=(1440, 900))
    try:
        if phone:
            tab.emulate_phone()
        tab.goto(site.url(page))
        tab.settle()
        # lazy images load when scrolled to: walk down the page once
        tab.js("""(async () => { for (let y = 0; y < document.body.scrollHeight; y += 600) {
                    window.scrollTo(0, y); await new Promise(r => setTimeout(r, 30)); }
                  return true; })()""")
        return tab.js(FIGURES), tab.js("innerWidth")
    finally:
        tab.close()


def test_chapter_figures_are_numbered_per_chapter_with_caption_alt_text(site):
    for chapter, page in enumerate(CHAPTERS, start=1):
        figs, _ = _figures(site, page)
        numbers = [f["number"] for f in figs]
        assert figs and all(numbers), f"{page}: a figure without number: {numbers}"
        # Fig. c.1, c.2, ... in the order of the page, c = the chapter's number in the sidebar
        assert numbers == [f"Fig. {chapter}.{k}" for k in range(1, len(figs) + 1)], (page, numbers)
        for f in figs:
            for alt in f["alt"]:  # static figures: the caption, without TeX
                assert len(alt) > 30 and "\\" not in alt and "$" not in alt, (page, f["id"], alt)


def test_notebook_page_repeats_the_chapter_number_of_a_figure(site):
    chapter = {f["id"]: f["number"] for f in _figures(site, CHAPTERS[1])[0]}
    chapter.update({f["id"]: f["number"] for f in _figures(site, CHAPTERS[0])[0]})
    notebook = {f["id"]: f["number"] for f in _figures(site, "notebooks/02-gradient-descent.html")[0]}
    twins = {k[3:]: v for k, v in notebook.items() if k.startswith("nb-")}
    assert twins == {k: chapter[k] for k in twins}  # nb-fig-X carries the number of fig-X
    assert twins["fig-overview-problem"] == "Fig. 1.1" and twins["fig-gd-toy"] == "Fig. 2.1"


def test_phone_stacks_multi_panel_figures_and_a_tap_opens_the_image(site):
    figs, width = _figures(site, CHAPTERS[1], phone=True)
    toy = next(f for f in figs if f["id"] == "fig-gd-toy")
    assert len(toy["src"]) == 1, "exactly one variant is shown"
    assert toy["right"] <= width
    desktop = next(f for f in _figures(site, CHAPTERS[1])[0] if f["id"] == "fig-gd-toy")
    assert toy["src"] != desktop["src"], "the phone shows the one-column variant"
    for f in figs:
        for link, src in zip(f["links"], f["src"]):
            assert link == src, (f["id"], link, src)  # a tap opens the image itself
