"""The whole book as one PDF (README: `python tools/build_pdf.py`, written to _build/pdf/).

The ``book_pdf`` fixture runs that command when the PDF is missing or older than a source (the
command itself returns at once when the PDF is current), after the strict HTML build of the
``site`` fixture, whose execution cache the single-page build reuses.
"""

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PDF = ROOT / "_build" / "pdf" / "inverting-gradients.pdf"


def _norm(text: str) -> str:
    """Letters and digits only, lower case: PDF text extraction splits and joins words freely."""
    # NFKC: the PDF's text has ligatures ("ﬁ", "ﬀ") where the source has two letters
    return re.sub(r"[^0-9a-z]+", "", unicodedata.normalize("NFKC", text).lower())


def _first_heading(doc: str) -> str:
    md = ROOT / f"{doc}.md"
    if md.is_file():
        for line in md.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    import json

    nb = json.loads((ROOT / f"{doc}.ipynb").read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise AssertionError(f"{doc} has no top-level heading")


def toc_titles() -> list[str]:
    """Every page title of _toc.yml: its `title:` or else the page's first heading."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    titles = []

    def walk(items):
        for item in items or []:
            if "file" in item:
                titles.append(item.get("title") or _first_heading(item["file"]))
            walk(item.get("sections"))

    titles.append(_first_heading(toc["root"]))
    for part in toc["parts"]:
        walk(part["chapters"])
    return titles


@pytest.fixture(scope="session")
def book_pdf(site):
    proc = subprocess.run([sys.executable, "tools/build_pdf.py"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and PDF.is_file(), (
        f"tools/build_pdf.py failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    from pypdf import PdfReader

    return PdfReader(str(PDF))


@pytest.fixture(scope="session")
def book_text(book_pdf) -> list[str]:
    """The text of every page (extracting it takes a while: once per session)."""
    return [p.extract_text() or "" for p in book_pdf.pages]


def test_pdf_has_at_least_100_pages(book_pdf):
    assert len(book_pdf.pages) >= 100, f"the book PDF has only {len(book_pdf.pages)} pages"


def test_pdf_contains_every_page_title_and_an_outline(book_pdf, book_text):
    text = _norm(" ".join(book_text))
    missing = [t for t in toc_titles() if _norm(t) not in text]
    assert not missing, f"page titles missing from the PDF's text: {missing}"
    # the contents page lists the chapters with their page numbers ...
    contents = " ".join(book_text[1:4])
    assert "Contents" in contents
    assert re.search(r"Inverse gradients\s*\.*\s*\d+", contents), "no page number in the contents"
    # ... and the PDF viewer's outline has an entry per chapter
    outline = book_pdf.outline
    flat = []

    def walk(items):
        for it in items:
            if isinstance(it, list):
                walk(it)
            else:
                flat.append(_norm(it.title))

    walk(outline)
    assert any("inversegradients" in t for t in flat), "the PDF has no outline (bookmarks)"


def test_pdf_has_numbered_equations_figures_and_the_bibliography(book_text):
    text = " ".join(book_text)
    assert re.search(r"Fig\. ?\d+(\.\d+)*", text), "no numbered figure captions in the PDF"
    assert re.search(r"\(\d{1,3}\)", text), "no equation numbers in the PDF"
    # the bibliography of chapter 9, with a DOI
    flat = _norm(text)
    assert _norm("References") in flat
    assert _norm("Half-Inverse Gradients for Physical Deep Learning") in flat
    assert _norm("10.48550/arXiv.2203.10131") in flat, "the HIG paper's DOI is not printed"
