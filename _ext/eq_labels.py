"""Link the equation labels that docstrings cite to the numbered equations of the chapters.

physgrad's docstrings name the equation they implement by its label, in the book's notation:
``chapter 5, eq. ``pg-update````, ``eqs. ``nn-loss``, ``nn-grad````. On the API pages this
extension turns each such label into an equation reference (the ``:eq:`` role of Sphinx's math
domain, the same as ``{eq}`` in the chapters), so the reader sees a linked number such as
"eq. (12)" instead of a code-font label. In a terminal (``help(physgrad.pg)``) the docstring is
unchanged and still reads naturally.

Only labels right after "eq." / "eqs." (and further labels of the same list, joined by commas,
"and" or "or"), or right before the chapter that derives them ("``pg-update`` (ch. 5)", the
table of :mod:`physgrad.updates`), are converted; a label that no chapter defines is an unresolved reference, which
the strict (nitpicky) build reports.
"""

from __future__ import annotations

import re

LABEL = r"``([A-Za-z0-9][A-Za-z0-9_:-]*)``"
# "eq. ``a``", "eqs. ``a``, ``b`` and ``c``", "Eq. ``a``"; the label list may wrap a line
CITATION = re.compile(
    r"(?P<word>\b[Ee]qs?\.)(?P<labels>\s+" + LABEL + r"(?:\s*(?:,|,?\s+and|,?\s+or)\s+" + LABEL + r")*)")
ONE = re.compile(LABEL)
# a label followed by the chapter that derives it, as in the table of physgrad.updates:
# "``pg-update`` (ch. 5)"
WITH_CHAPTER = re.compile(LABEL + r"(?=\s+\(ch\.\s*\d)")


def link_labels(text: str) -> str:
    """``eq. ``label```` -> ``eq. :eq:`label``` in one docstring line (or several)."""

    def replace(m: re.Match) -> str:
        return m.group("word") + ONE.sub(r":eq:`\1`", m.group("labels"))

    return WITH_CHAPTER.sub(r":eq:`\1`", CITATION.sub(replace, text))


def _process_docstring(app, what, name, obj, options, lines):
    if not lines:
        return
    text = "\n".join(lines)
    new = link_labels(text)
    if new != text:
        lines[:] = new.split("\n")


def setup(app):
    # after napoleon (priority 500) so the numpy sections are already converted
    app.connect("autodoc-process-docstring", _process_docstring, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
