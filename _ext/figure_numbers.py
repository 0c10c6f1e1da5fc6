"""Figure numbers per chapter, one number per figure, and captions as alt text.

* **Per chapter.** The chapters' parts in ``_toc.yml`` are ``numbered: 1``: each chapter gets a
  number (continuous across parts, by Jupyter Book's sphinx-multitoc-numbering), its sections
  and notebook pages do not, and Sphinx's ``numfig`` prefixes every figure (and equation) with
  its chapter: Fig. 2.1, 2.2, … on the chapter page, continued on the chapter's notebook pages.
  Pages outside a numbered part (the appendix, the reference) have no chapter number; their
  figures are numbered A.1, A.2, … in reading order instead of a bare 1, 2, ….
* **One figure, one number.** A chapter shows the figures its notebook makes (``{glued-figure}``
  named ``fig-X``); the notebook page shows the same image where it is made (``{glue:figure}``
  named ``nb-fig-X``). Both carry a caption, and both carry the chapter's number: a figure
  ``nb-fig-X`` whose twin ``fig-X`` is numbered takes the twin's number and no number of its own,
  and the remaining figures of the chapter close ranks (no gaps).
* **Alt text.** An image inside a captioned figure gets the caption as its alt text, with inline
  TeX turned into Unicode (``\\eta`` -> η), so a screen reader does not spell out TeX.
  (``_ext/site_polish.py`` gives the remaining images a generic description.)
"""

from __future__ import annotations

import re

from docutils import nodes

#: the prefix of figures outside every numbered chapter (appendix, reference)
APPENDIX = "A"
#: the prefix of the cover's figures (the front matter, before chapter 1)
FRONT = "0"
TWIN = "nb-"


def renumber(fignumbers: dict, front: str = "") -> dict:
    """Per-chapter figure numbers with twins merged, from Sphinx's ``env.toc_fignumbers``.

    ``fignumbers[doc]["figure"][id]`` is Sphinx's tuple (chapter, k) -- or (k,) for a page without
    a chapter number -- assigned in reading order. Returns the same structure with (i) the
    figures named ``nb-<id>`` that have a numbered twin ``<id>`` given the twin's number, (ii)
    the other figures of each chapter renumbered 1, 2, … in their old order, and (iii) the
    figures of pages without a chapter number prefixed with :data:`APPENDIX`, except the cover
    page ``front`` (the root document), whose figures are prefixed with :data:`FRONT`.
    Other kinds of numbers (tables, code blocks, equations) are left as they are.
    """
    figs = [(num, doc, fid) for doc, kinds in fignumbers.items()
            for fid, num in kinds.get("figure", {}).items()]
    owner = {fid: (doc, num) for num, doc, fid in figs}
    twins = {(doc, fid): owner[fid[len(TWIN):]] for num, doc, fid in figs
             if fid.startswith(TWIN) and fid[len(TWIN):] in owner}
    new = {doc: {kind: dict(ids) for kind, ids in kinds.items()}
           for doc, kinds in fignumbers.items()}
    counters: dict = {}
    def order(fig):
        return tuple(int(p) if str(p).isdigit() else -1 for p in fig[0])

    for num, doc, fid in sorted(figs, key=order):
        if (doc, fid) in twins:
            continue
        prefix = tuple(num[:-1]) if len(num) > 1 else ((FRONT,) if doc == front else (APPENDIX,))
        counters[prefix] = counters.get(prefix, 0) + 1
        new[doc]["figure"][fid] = (*prefix, counters[prefix])
    for (doc, fid), (tdoc, _) in twins.items():
        new[doc]["figure"][fid] = new[tdoc]["figure"][fid[len(TWIN):]]
    return new


def _renumber(app, env):
    env.toc_fignumbers = renumber(env.toc_fignumbers, front=env.config.root_doc)
    return []


# --- alt text from the caption ----------------------------------------------------------------------
def caption_text(caption: nodes.Node) -> str:
    """The caption as plain text, inline math in Unicode (η, x², ‖·‖) instead of TeX."""
    from site_polish import tex_to_unicode  # noqa: PLC0415 (a sibling local extension)

    node = caption.deepcopy()
    for m in list(node.findall(nodes.math)):
        m.parent.replace(m, nodes.Text(tex_to_unicode(m.astext())))
    return re.sub(r"\s+", " ", node.astext()).strip()


def _alt_from_captions(app, doctree, docname):
    for fig in doctree.findall(nodes.figure):
        caption = next(iter(fig.findall(nodes.caption)), None)
        if caption is None or not caption.astext().strip():
            continue
        text = caption_text(caption)
        for img in fig.findall(nodes.image):
            if not img.get("alt") and not fig.get("glued_alt"):
                img["alt"] = text


def setup(app):
    # after Sphinx's own numbering (TocTreeCollector, env-get-updated at the default priority)
    app.connect("env-get-updated", _renumber, priority=900)
    # before site_polish's generic alt text (priority 500)
    app.connect("doctree-resolved", _alt_from_captions, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
