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
keeps the figure out of the book's figure numbering.
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import directives
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
    }

    def run(self):
        from myst_nb.ext.glue.utils import PendingGlueReferenceError, create_pending_glue_ref

        if "doc" not in self.options:
            raise self.error("glued-figure needs a :doc: option (the notebook that glued the key)")
        source, line = self.get_source_info()
        try:
            ref = create_pending_glue_ref(self.state.document, source, line, self.options["doc"],
                                          self.arguments[0], inline=False, gtype="any")
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
        figure += ref
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


def setup(app):
    app.add_directive("glued-figure", GluedFigure)
    app.connect("doctree-read", _hide_from_numbering)
    app.connect("doctree-resolved", _restore_ids)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
