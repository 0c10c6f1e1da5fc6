"""``{glued-figure}``: a numbered, captioned figure whose image is glued from another notebook.

myst-nb's ``{glue:figure}`` only takes images glued in the same document, and ``{glue}`` with a
``:doc:`` option gives an image without a caption or number. A chapter page (Markdown) that
shows a notebook's figure needs both, so this directive combines them::

    ```{glued-figure} fig-gd-toy
    :doc: ../notebooks/02-gradient-descent.ipynb
    :name: fig-gd-toy
    :alt: Three panels: the paths of two gradient-descent runs ...

    Caption text, as in a ``{figure}``. Further paragraphs form the legend.
    ```

``:doc:`` is relative to the page (as for ``{glue}``); ``:name:`` makes the figure referable
with ``{numref}``; ``:alt:`` is the image's alt text (default: the caption); ``:unnumbered:``
keeps the figure out of the book's figure numbering. ``:narrow: KEY`` names a second glued
image of the same notebook, the one-column variant of a multi-panel figure
(:func:`physgrad.plotting.one_column`): the page then carries both, and ``assets/figures.css``
shows the narrow one on screens below 600 px and the wide one above (one figure, one number,
one caption). Both images are loaded lazily, so a browser fetches only the one it shows.
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.docutils import SphinxDirective


class GluedFigure(SphinxDirective):
    required_arguments = 1
    has_content = True
    option_spec = {
        "doc": directives.unchanged_required,
        "name": directives.unchanged,
        "alt": directives.unchanged,
        "class": directives.class_option,
        "figwidth": directives.length_or_percentage_or_unitless,
        "unnumbered": directives.flag,
        "narrow": directives.unchanged_required,
    }

    def run(self):
        from myst_nb.ext.glue.utils import PendingGlueReferenceError, create_pending_glue_ref

        if "doc" not in self.options:
            raise self.error("glued-figure needs a :doc: option (the notebook that glued the key)")
        source, line = self.get_source_info()
        refs = []
        for key in (self.arguments[0], self.options.get("narrow")):
            if key is None:
                continue
            try:
                refs.append(create_pending_glue_ref(self.state.document, source, line,
                                                    self.options["doc"], key, inline=False,
                                                    gtype="any"))
            except PendingGlueReferenceError as exc:
                raise self.error(str(exc)) from exc
        figure = nodes.figure("", classes=["glued-figure", *self.options.get("class", [])])
        figure.source, figure.line = source, line
        if "unnumbered" in self.options:
            figure["classes"].append("unnumbered")
        if "figwidth" in self.options:
            figure["width"] = self.options["figwidth"]
        if "alt" in self.options:
            figure["glued_alt"] = self.options["alt"]
        if len(refs) == 1:
            figure += refs[0]
        else:  # the wide image and its one-column variant; CSS shows one of them
            figure += nodes.container("", refs[0], classes=["pg-fig-wide"])
            figure += nodes.container("", refs[1], classes=["pg-fig-narrow"])
        if self.content:
            holder = nodes.Element()
            self.state.nested_parse(self.content, self.content_offset, holder)
            first = holder[0] if len(holder) else None
            if isinstance(first, nodes.paragraph):
                caption = nodes.caption(first.rawsource, "", *first.children)
                caption.source, caption.line = first.source, first.line
                figure += caption
                rest = holder[1:]
            else:
                rest = holder[:]
            if rest:
                figure += nodes.legend("", *rest)
        self.add_name(figure)
        return [figure]


def _hide_from_numbering(app, doctree):
    # Sphinx numbers every captioned figure that has an id. An unnumbered figure (the cover's
    # teaser, which must not shift the numbers of the book's figures) hides its id while the
    # numbers are assigned, and gets it back before the page is written.
    for fig in doctree.findall(nodes.figure):
        if "unnumbered" in fig["classes"] and fig["ids"]:
            fig["unnumbered_ids"], fig["ids"] = fig["ids"], []


def _restore_ids(app, doctree, docname):
    for fig in doctree.findall(nodes.figure):
        if fig.get("unnumbered_ids"):
            fig["ids"] = fig["unnumbered_ids"]


class WriteNarrowImages(SphinxPostTransform):
    """Write the image file of each narrow variant before myst-nb resolves the glue reference.

    myst-nb's cross-page glue only links to ``_images/<sha256>.png``; the file itself is
    written when the notebook page shows the image. A narrow variant is glued but never shown on
    its notebook page (it would duplicate the figure there), so its file is written here, from
    the notebook's glue cache, for builders that copy images into an image folder (HTML)."""

    default_priority = 4  # myst-nb's ReplacePendingGlueReferences runs at 5

    def run(self, **kwargs):
        from binascii import a2b_base64
        from hashlib import sha256
        from pathlib import Path

        from myst_nb.ext.glue.crossref import read_glue_cache
        from myst_nb.ext.glue.utils import PendingGlueReference

        imagedir = getattr(self.app.builder, "imagedir", None)
        if not imagedir:
            return
        folder = Path(self.app.builder.outdir) / imagedir
        for box in self.document.findall(nodes.container):
            if "pg-fig-narrow" not in box["classes"]:
                continue
            for ref in box.findall(PendingGlueReference):
                data = read_glue_cache(self.env.mystnb_config.output_folder, ref.refdoc)
                png = data.get(ref.key, {}).get("data", {}).get("image/png")
                if png is None:
                    continue  # myst-nb reports the missing key itself
                raw = a2b_base64(png)
                target = folder / f"{sha256(raw).hexdigest()}.png"
                if not target.exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(raw)


def _lazy_variants(app, doctree, docname):
    # both variants of a figure with a narrow twin: load only the one that is displayed
    for box in doctree.findall(nodes.container):
        if {"pg-fig-wide", "pg-fig-narrow"} & set(box["classes"]):
            for img in box.findall(nodes.image):
                img["loading"] = "lazy"


def setup(app):
    app.add_directive("glued-figure", GluedFigure)
    app.add_post_transform(WriteNarrowImages)
    app.connect("doctree-resolved", _lazy_variants)
    app.connect("doctree-read", _hide_from_numbering)
    app.connect("doctree-resolved", _restore_ids)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
