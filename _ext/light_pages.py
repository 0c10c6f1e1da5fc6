"""Load on each page only the scripts it uses (Sphinx extension, listed in _config.yml).

1. **Widget manager.** myst-nb adds the ipywidgets manager (RequireJS, the offline config and the
   3.6 MB ``embed-amd.js``, all in ``<head>``, so they block the first paint) to every notebook
   page whose stored notebook metadata carries widget *state*, even when no cell shows a widget
   (a finished progress bar, or a widget created but never displayed, leaves state behind). Here
   the manager and the state are dropped from a page whose body has no widget *view*
   (``application/vnd.jupyter.widget-view+json``): nothing on it could be drawn by the manager.
2. **Search index.** pydata-sphinx-theme's layout loads ``searchtools.js``, ``language_data.js``
   and the whole ``searchindex.js`` on every page, for an as-you-type search that this book does
   not switch on (``search_as_you_type`` is off: the search box submits to ``search.html``, which
   loads them itself). They are removed from every other page after the build.
"""

from __future__ import annotations

import re
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# the theme's three search scripts, as written by its layout.html (any relative prefix)
_SEARCH_SCRIPTS = re.compile(
    r'[ \t]*<script src="(?:\.\./)*(?:_static/searchtools\.js|_static/language_data\.js|'
    r'searchindex\.js)(?:\?[^"]*)?"></script>\n?')


def _widget_scripts(app) -> set[str]:
    return set((getattr(app.config, "nb_ipywidgets_js", None) or {}).keys())


def drop_unused_widget_manager(app, pagename, templatename, context, doctree):
    if WIDGET_VIEW in (context.get("body") or ""):
        return
    manager = _widget_scripts(app)
    files = context.get("script_files")
    if not files:
        return
    kept = []
    for js in files:
        name = str(getattr(js, "filename", js) or "")
        attrs = getattr(js, "attributes", {}) or {}
        if attrs.get("type") == WIDGET_STATE:
            continue
        if any(name == m or name.endswith("/" + m) for m in manager):
            continue
        kept.append(js)
    files[:] = kept


def drop_search_scripts(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    search_page = "search" + app.builder.out_suffix
    for page in Path(app.outdir).rglob("*" + app.builder.out_suffix):
        if page.name == search_page and page.parent == Path(app.outdir):
            continue
        text = page.read_text(encoding="utf-8")
        new = _SEARCH_SCRIPTS.sub("", text)
        if new != text:
            page.write_text(new, encoding="utf-8")


def setup(app):
    app.connect("html-page-context", drop_unused_widget_manager, priority=900)
    app.connect("build-finished", drop_search_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
