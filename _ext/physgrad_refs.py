"""Resolve references to physgrad's public names, e.g. ``:class:`physgrad.Problem```.

The API page documents each object where it is defined (``physgrad.problem.Problem``), but
docstrings and chapters naturally write the re-exported short names (``physgrad.Problem``,
``physgrad.optimize``, ``physgrad.Problem.jvp``). When such a reference is otherwise missing,
this extension imports the object, takes its defining module and qualified name, and resolves the
reference to that target. A name that does not exist stays a (nitpicky) warning.
"""

from __future__ import annotations

import importlib


def _lookup(target: str):
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


def _resolve(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("physgrad."):
        return None
    obj = _lookup(target)
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or f"{module}.{qualname}" == target:
        return None
    canonical = f"{module}.{qualname}"
    new = node.deepcopy()
    new["reftarget"] = canonical
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], canonical, new, contnode)


def setup(app):
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
