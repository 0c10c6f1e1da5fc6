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

The book's short form works as well: ``{glue:figure} KEY`` with ``:name:`` (and optionally
``:doc:``) in a chapter page. myst-nb's own ``glue:figure`` only finds keys glued in the same
notebook; here, when the page has no such key, the figure is taken from the notebook that glued
it (``:doc:``, or the one notebook of the book whose outputs carry the key) exactly as
``{glued-figure}`` does.

``:doc:`` is relative to the page (as for ``{glue}``); ``:name:`` makes the figure referable
with ``{numref}``; ``:alt:`` is the image's alt text (default: the caption); ``:unnumbered:``
keeps the figure out of the book's figure numbering. ``:narrow: KEY`` names a second glued
image of the same notebook, the one-column variant of a multi-panel figure
(:func:`physgrad.plotting.one_column`): the page then carries both, and ``assets/figures.css``
shows the narrow one on screens below 600 px and the wide one above (one figure, one number,
one caption). Both images are loaded lazily, so a browser fetches only the one it shows.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def _glued_keys(env) -> dict:
    """{key: [docname, ...]} over the book's notebooks, from their stored outputs (cached)."""
    import json

    cache = getattr(env, "_pg_glued_keys", None)
    if cache is not None:
        return cache
    cache = {}
    for docname in sorted(env.found_docs):
        path = env.doc2path(docname)
        if not str(path).endswith(".ipynb"):
            continue
        try:
            cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
        except (OSError, ValueError):
            continue
        for cell in cells:
            for out in cell.get("outputs", []):
                name = out.get("metadata", {}).get("scrapbook", {}).get("name")
                if name:
                    cache.setdefault(name, []).append(docname)
    env._pg_glued_keys = cache
    return cache


def _glue_figure_directive():
    from myst_nb.ext.glue.directives import PasteFigureDirective
    from myst_nb.ext.glue.utils import RetrievalError, retrieve_glue_data

    class GlueFigure(PasteFigureDirective):
        """myst-nb's ``glue:figure``, which also takes a key from another notebook."""

        option_spec = {**PasteFigureDirective.option_spec, "doc": directives.unchanged,
                       "narrow": directives.unchanged_required, "unnumbered": directives.flag}

        @property
        def env(self):
            return self.state.document.settings.env

        def run(self):
            if "doc" not in self.options:
                try:
                    retrieve_glue_data(self.document, self.arguments[0])
                    return super().run()  # a key of this notebook: myst-nb's directive
                except RetrievalError:
                    pass
                docs = _glued_keys(self.env).get(self.arguments[0], [])
                if len(docs) != 1:
                    raise self.error(f"glue:figure: key {self.arguments[0]!r} is glued by "
                                     f"{len(docs)} notebooks ({', '.join(docs) or 'none'}); "
                                     "name the notebook with :doc:")
                here = Path(self.env.doc2path(self.env.docname)).parent
                self.options["doc"] = os.path.relpath(self.env.doc2path(docs[0]), here)
            options = {k: v for k, v in self.options.items()
                       if k in GluedFigure.option_spec}
            if "figclass" in self.options:
                options["class"] = self.options["figclass"]
            return GluedFigure(self.name, self.arguments, options, self.content, self.lineno,
                               self.content_offset, self.block_text, self.state,
                               self.state_machine).run()

    return GlueFigure


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
    app.add_directive_to_domain("glue", "figure", _glue_figure_directive(), override=True)
    app.add_post_transform(WriteNarrowImages)
    app.connect("doctree-resolved", _lazy_variants)
    app.connect("doctree-read", _hide_from_numbering)
    app.connect("doctree-resolved", _restore_ids)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
