"""Write the whole book as one PDF: ``python tools/build_pdf.py`` -> _build/pdf/inverting-gradients.pdf

Route (everything installs with the README's commands, nothing is downloaded while it runs):

1. Sphinx's ``singlehtml`` builder, through Jupyter Book with the book's own configuration
   (``jupyter-book build . --builder singlehtml``): every page of
   _toc.yml in order on one HTML page, with the same numbered equations and figures, glued
   outputs (from the execution cache of the HTML build) and the bibliography. It is strict like
   the HTML build (_ext/strict_build.py).
2. A title page and a table of contents are put in front of it, and each chapter starts on a new
   page.
3. Debian's Chromium opens the page headless (over the DevTools protocol, tools/devtools.py),
   waits until MathJax has typeset it and every interactive figure has drawn its initial state,
   switches to print media (assets/book.css: slider rows hidden, wide equations and tables
   shrunk) and prints it to A4 with page numbers and a PDF outline.
4. The table of contents gets its page numbers: the first print is searched (pypdf) for the page
   on which each entry's title starts, the numbers are written into the contents, and the page is
   printed again (the contents keep their length, so the numbers stay right).

The PDF is also copied next to the site's index.html (_build/html/inverting-gradients.pdf),
where the cover and the download menu link to it.

Options: ``--skip-sphinx`` reuses an existing _build/singlehtml (to iterate on the printing).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from devtools import HEADLESS_FLAGS, DevToolsPage  # noqa: E402

SINGLE = ROOT / "_build" / "singlehtml"
OUT_DIR = ROOT / "_build" / "pdf"
PDF_NAME = "inverting-gradients.pdf"
BUILD_CMD = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
             "build", ".", "--builder", "singlehtml"]
# Offline: any request that would leave the machine goes to a dead proxy.
FLAGS = [*HEADLESS_FLAGS, "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--allow-file-access-from-files"]
A4 = dict(paperWidth=8.27, paperHeight=11.69, marginTop=0.55, marginBottom=0.6,
          marginLeft=0.55, marginRight=0.55)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("build_pdf: no chromium found (Debian: `apt-get install -y chromium`)")


def toc_entries() -> list[dict]:
    """The book's pages in reading order from _toc.yml: {docname, level, part}."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    out = []

    def walk(items, level):
        for item in items or []:
            if "file" in item:
                out.append({"doc": item["file"], "level": level, "title": item.get("title")})
            walk(item.get("sections"), level + 1)

    for part in toc.get("parts", []):
        out.append({"part": part.get("caption", "")})
        walk(part.get("chapters"), 0)
    return out


def _section_title(page: str, doc: str) -> tuple[str, str] | None:
    """(anchor id, title text) of the top section of ``doc`` in the singlehtml page."""
    anchor = "document-" + doc
    m = re.search(r'<span id="%s"></span>' % re.escape(anchor), page)
    if not m:
        return None
    # singlehtml demotes each page's title to <h2>
    h = re.search(r"<h([1-3])[^>]*>(.*?)</h\1>", page[m.end():], flags=re.S)
    if not h:
        return None
    text = re.sub(r"<[^>]+>", "", h.group(2))
    text = html.unescape(text).replace("#", "").strip()
    return anchor, text


def front_matter(page: str, numbers: dict[str, int] | None) -> tuple[str, list[dict]]:
    """HTML of the title page and the contents, and the contents' entries."""
    entries = []
    rows = []
    for e in toc_entries():
        if "part" in e:
            rows.append(f'<li class="part">{html.escape(e["part"])}</li>')
            continue
        found = _section_title(page, e["doc"])
        if not found:
            continue
        anchor, title = found
        title = e["title"] or title  # _toc.yml's Unicode title where the heading has math
        entries.append({"anchor": anchor, "title": title, "doc": e["doc"]})
        num = "" if numbers is None else str(numbers.get(e["doc"], ""))
        cls = "section" if e["level"] else "chapter"
        rows.append(f'<li class="{cls}" data-doc="{html.escape(e["doc"])}"><a href="#{anchor}">{html.escape(title)}</a>'
                    f'<span class="dots"></span><span class="page">{num or "&#8199;&#8199;&#8199;"}'
                    f"</span></li>")
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    title, _, subtitle = (html.escape(cfg.get("title", "The book")) + ":").partition(":")
    subtitle = subtitle.rstrip(":").strip()
    author = html.escape(cfg.get("author", ""))
    year = html.escape(str(cfg.get("copyright", "")))
    front = (f'<section class="pdf-cover"><p class="pdf-title">{title}</p>'
             f'<p class="pdf-subtitle">{subtitle[:1].upper() + subtitle[1:]}</p><p>{author}, {year}</p>'
             '<p>An executable book with the physgrad PyTorch package. The interactive figures are '
             'printed in their initial state; their sliders work on the website.</p></section>'
             f'<nav class="pdf-toc"><p class="pdf-toc-title">Contents</p><ol>{"".join(rows)}</ol></nav>')
    return front, entries


def unique_figure_ids(page: str) -> str:
    """The single page holds some interactive figures twice (in a chapter and on the explorables
    page) under the same element id; each copy gets its own id, so that each one draws."""
    seen: dict[str, int] = {}

    def rename(m: re.Match) -> str:
        fid = m.group(1)
        seen[fid] = seen.get(fid, 0) + 1
        if seen[fid] == 1:
            return m.group(0)
        new = f"{fid}-copy{seen[fid]}"
        block = m.group(0)
        block = block.replace(f'id="{fid}"', f'id="{new}"', 1)
        block = block.replace(f'id="{fid}-spec"', f'id="{new}-spec"', 1)
        return block.replace(f'var id="{fid}"', f'var id="{new}"', 1)

    return re.sub(r'<div class="pgv" id="(pgv-[^"]+)".*?var id="\1"', rename, page, flags=re.S)


def prepare(numbers: dict[str, int] | None = None) -> tuple[Path, list[dict]]:
    """Write _build/singlehtml/book-print.html: the single page with front matter and page
    breaks before chapters."""
    page = unique_figure_ids((SINGLE / "index.html").read_text(encoding="utf-8"))
    front, entries = front_matter(page, numbers)
    # each top-level page starts on a new sheet
    page = re.sub(r'(<span id="document-(?!index")[^"]+"></span>)',
                  r'<div class="pdf-chapter-start"></div>\1', page)
    # front matter right at the start of the article body
    m = re.search(r'<article class="bd-article"[^>]*>', page)
    if not m:
        raise SystemExit("build_pdf: no <article class=\"bd-article\"> in the singlehtml page")
    # the theme's print-only page header repeats the book's title above the title page
    hide = '<style>@media print { #jb-print-docs-body { display: none !important; } }</style>'
    page = page[:m.end()] + hide + front + page[m.end():]
    out = SINGLE / "book-print.html"
    out.write_text(page, encoding="utf-8")
    return out, entries


def print_book(chromium: str, page: Path, pdf: Path, entries: list[dict]) -> dict[str, int]:
    """Print ``page`` to ``pdf`` twice on one loaded page: first to find each contents entry's
    page, then with those numbers written into the contents. Returns the numbers."""
    p = DevToolsPage(chromium, size=(1000, 1400), flags=FLAGS)
    try:
        t0 = time.time()
        p.goto(page.as_uri(), timeout=600)
        print(f"build_pdf:   loaded in {time.time() - t0:.0f} s", flush=True)
        p.js("window.MathJax && MathJax.startup && MathJax.startup.promise ?"
             " MathJax.startup.promise.then(() => true) : true")
        print(f"build_pdf:   typeset after {time.time() - t0:.0f} s", flush=True)
        # every interactive figure has drawn (or reported why not)
        p.wait_for("Array.from(document.querySelectorAll('.pgv')).every(e => "
                   "e.getAttribute('data-ready') === '1' || "
                   "(e.querySelector('.pgv-msg') && !/^Loading/.test(e.querySelector('.pgv-msg').textContent)))",
                   timeout=300)
        p.wait_for("document.readyState === 'complete'", timeout=60)
        state = p.js("Array.from(document.querySelectorAll('.pgv')).map(e => e.id + ':' + "
                     "(e.getAttribute('data-ready') || e.querySelector('.pgv-msg').textContent.slice(0, 80)))")
        print(f"build_pdf:   figures drawn after {time.time() - t0:.0f} s: "
              f"{sum(s.endswith(':1') for s in state)} of {len(state)}", flush=True)
        for s in state:
            if not s.endswith(":1"):
                print(f"build_pdf:   not drawn: {s}", flush=True)
        p.send("Emulation.setEmulatedMedia", media="print")
        time.sleep(0.5)
        p.js("window.physgradFitForPrint && window.physgradFitForPrint(); true")
        title = html.escape(yaml.safe_load((ROOT / "_config.yml").read_text())["title"])
        header = (f'<div style="font-size:7pt;width:100%;text-align:center;color:#777;">{title}</div>')
        footer = ('<div style="font-size:8pt;width:100%;text-align:center;color:#444;">'
                  '<span class="pageNumber"></span></div>')

        def once():
            r = p.send("Page.printToPDF", timeout=900, printBackground=True, displayHeaderFooter=True,
                       headerTemplate=header, footerTemplate=footer, generateDocumentOutline=True,
                       **A4)
            pdf.write_bytes(base64.b64decode(r["data"]))
            print(f"build_pdf:   printed after {time.time() - t0:.0f} s", flush=True)

        once()
        numbers = page_numbers(pdf, entries)
        print(f"build_pdf:   found the page of {len(numbers)} of {len(entries)} contents entries; "
              "printing again with the numbers", flush=True)
        # the placeholders have the width of three digits, so the layout does not move
        p.js("(nums => { for (const li of document.querySelectorAll('.pdf-toc li[data-doc]')) {"
             " const n = nums[li.getAttribute('data-doc')];"
             " if (n) li.querySelector('.page').textContent = String(n); } return true; })(%s)"
             % json.dumps(numbers))
        once()
        return numbers
    finally:
        p.close()


def page_numbers(pdf: Path, entries: list[dict]) -> dict[str, int]:
    """The page on which each contents entry starts, from the PDF's outline (Chromium makes one
    bookmark per heading): entries are matched in order, by the start of their title."""
    from pypdf import PdfReader

    def norm(s: str) -> str:
        return re.sub(r"[^0-9a-z]+", "", unicodedata.normalize("NFKC", s).lower())

    reader = PdfReader(str(pdf))
    marks = []

    def walk(items):
        for it in items:
            if isinstance(it, list):
                walk(it)
            else:
                marks.append((norm(it.title), reader.get_destination_page_number(it) + 1))

    walk(reader.outline)
    numbers, at = {}, 0
    for e in entries:
        key = norm(e["title"])[:24]  # a prefix: math in a heading reads differently
        for i in range(at, len(marks)):
            if key and marks[i][0].startswith(key):
                numbers[e["doc"]] = marks[i][1]
                at = i + 1
                break
    return numbers


# What the PDF is made from (as tests/conftest.py's SOURCES, plus this script): when the PDF is
# newer than all of them, the command has nothing to do.
SOURCES = ["_config.yml", "_toc.yml", "references.bib", "index.md", "chapters", "notebooks",
           "physgrad", "vendor", "assets", "_ext", "tools"]


def newest_source() -> float:
    newest = 0.0
    for name in SOURCES:
        p = ROOT / name
        files = [p] if p.is_file() else (p.rglob("*") if p.is_dir() else [])
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts and ".ipynb_checkpoints" not in f.parts:
                newest = max(newest, f.stat().st_mtime)
    return newest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-sphinx", action="store_true",
                    help="reuse _build/singlehtml instead of building it")
    ap.add_argument("--force", action="store_true", help="build even if the PDF is up to date")
    args = ap.parse_args(argv)
    t0 = time.time()
    pdf = OUT_DIR / PDF_NAME
    html_copy = ROOT / "_build" / "html" / PDF_NAME
    if not args.force and pdf.is_file() and pdf.stat().st_mtime >= newest_source():
        if html_copy.parent.is_dir():
            shutil.copyfile(pdf, html_copy)
        print(f"build_pdf: {pdf.relative_to(ROOT)} is newer than every source; nothing to do "
              "(--force builds it anyway)")
        return 0
    if not args.skip_sphinx:
        print("build_pdf: jupyter-book build . --builder singlehtml", flush=True)
        proc = subprocess.run(BUILD_CMD, cwd=ROOT)
        if proc.returncode != 0:
            print("build_pdf: the single-page build failed", file=sys.stderr)
            return proc.returncode
    chromium = find_chromium()
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    page, entries = prepare(None)
    print(f"build_pdf: printing {len(entries)} pages of the book with {chromium}", flush=True)
    print_book(chromium, page, pdf, entries)
    if html_copy.parent.is_dir():
        shutil.copyfile(pdf, html_copy)
    from pypdf import PdfReader

    n = len(PdfReader(str(pdf)).pages)
    print(f"build_pdf: wrote {pdf.relative_to(ROOT)} ({n} pages, {pdf.stat().st_size / 1e6:.1f} MB) "
          f"in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
