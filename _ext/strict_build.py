"""Make a plain ``jupyter-book build .`` as strict as ``--all -W -n --keep-going``.

Jupyter Book 1 has no config keys for Sphinx's -W / --keep-going / --all (they are arguments of the
Sphinx application, not configuration values), so this small local extension (loaded through
``sphinx.local_extensions`` in _config.yml) does the equivalent:

* ``app.keep_going = True``: Sphinx then sets the exit status to 1 at the end of a build that
  emitted ANY warning (the ``-W --keep-going`` behaviour: every warning is reported, then it fails).
* every page is re-read on every build (``--all``): an incremental build would silently skip the
  warnings of unchanged pages. Notebook executions are still reused from the jupyter-cache
  (``execute_notebooks: cache``), so re-reading is cheap.
* ``nitpicky`` (``-n``) is set in _config.yml.

A notebook that fails to execute is named once more at the end of the build, with the error type,
the run time and the tail of its traceback (which shows the failing cell's source), so a failing
first build from an empty cache says which cell failed and why, even when the log is long.

After a build with no exception and zero warnings it writes ``<outdir>/.strict-build-ok``
(removed otherwise), so tests/test_site.py can tell a clean, current build from a failed one.

Escape hatch for drafting only: ``PHYSGRAD_BOOK_LENIENT=1 jupyter-book build .`` keeps the
default (warnings do not fail the build, unchanged pages are not re-read).
"""

from __future__ import annotations

import os

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _reread_everything(app, env, added, changed, removed):
    # Returning docnames from `env-get-outdated` makes Sphinx re-read them.
    return sorted(env.found_docs - set(added) - set(changed) - set(removed))


STAMP = ".strict-build-ok"


def _report_failed_notebooks(app):
    """Log one summary line (and the traceback tail) per notebook whose execution failed."""
    meta = getattr(app.env, "nb_metadata", {}) or {}
    for docname in sorted(meta):
        data = meta[docname].get("exec_data") or {}
        if data.get("succeeded") is False:
            tb = (data.get("traceback") or "").strip().splitlines()
            tail = "\n".join(tb[-40:])
            runtime = data.get("runtime")
            took = f" after {runtime:.0f} s" if isinstance(runtime, (int, float)) else ""
            logger.warning(
                f"strict_build: notebook {docname} failed to execute{took}: "
                f"{data.get('error')} (execute.timeout in _config.yml is per cell).\n{tail}")


def _stamp(app, exception):
    if app.builder is None or app.builder.format != "html":
        return
    _report_failed_notebooks(app)
    stamp = os.path.join(app.outdir, STAMP)
    if exception is None and getattr(app, "_warncount", 1) == 0:
        with open(stamp, "w", encoding="utf-8") as fh:
            fh.write("built without warnings\n")
    elif os.path.exists(stamp):
        os.remove(stamp)


def setup(app):
    if os.environ.get("PHYSGRAD_BOOK_LENIENT", "") not in ("", "0"):
        logger.info("strict_build: PHYSGRAD_BOOK_LENIENT set -- warnings will not fail the build")
    else:
        app.keep_going = True
        app.connect("env-get-outdated", _reread_everything)
    app.connect("build-finished", _stamp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
