"""Reader-facing fixes of the built pages that no notebook or chapter can make itself.

* **Unicode titles.** A page title with inline math (``# Multi-modality: the inverse of $y = x^2$``)
  is typeset by MathJax in the page, but its plain-text uses -- the browser tab, ``{doc}`` link
  texts, the sidebar, the search results and the search page's sidebar (which load no MathJax) --
  would show raw TeX (``\\(y = x^2\\)``). This extension stores a Unicode version of every title
  (``y = x²``) for those uses; the heading on the page keeps its math.
* **Alt text.** An image without alt text gets the caption of its figure or, for a plain
  notebook output, a description naming the page; docutils would otherwise use the file path.
* **No stray reprs.** A cell whose last line returns a matplotlib object prints its repr
  (``Text(0.5, 0.98, '...')``); such outputs are left out of the page (the notebook keeps them).
* **Each inline script once.** Jupyter Book registers the Thebe and togglebutton extensions'
  inline configuration scripts twice (``const THEBE_JS_URL`` is then declared twice: a
  SyntaxError in every page's console). Identical script entries are dropped from each page.
"""

from __future__ import annotations

import re

from docutils import nodes

# --- TeX -> Unicode, for titles -----------------------------------------------------------------
_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν",
    "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ", "tau": "τ", "phi": "φ", "varphi": "φ",
    "chi": "χ", "psi": "ψ", "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ",
    "Lambda": "Λ", "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω", "nabla": "∇",
    "partial": "∂", "infty": "∞", "cdot": "·", "times": "×", "to": "→", "rightarrow": "→",
    "leftarrow": "←", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "approx": "≈", "ne": "≠",
    "neq": "≠", "sim": "∼", "propto": "∝", "in": "∈", "sum": "∑", "prod": "∏", "int": "∫",
    "sqrt": "√", "|": "‖", "top": "ᵀ", "ldots": "…", "dots": "…", "pm": "±", "star": "*",
}
_SUP = str.maketrans("0123456789+-=()niTk*", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱᵀᵏ*")
_SUB = str.maketrans("0123456789+-=()aeijkmnotx", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑᵢⱼₖₘₙₒₜₓ")
_SUP_OK = set("0123456789+-=()niTk*")
_SUB_OK = set("0123456789+-=()aeijkmnotx")


def tex_to_unicode(tex: str) -> str:
    """A readable plain-text form of simple inline TeX (``\\eta`` -> η, ``x^2`` -> x², ``x_1``
    -> x₁); what it cannot map it leaves as text without backslashes or braces."""
    s = tex.strip()
    s = re.sub(r"\\(?:mathrm|mathbf|mathit|text|operatorname|boldsymbol|mathcal)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"\1/\2", s)
    s = re.sub(r"\\(?:left|right|big|Big|bigl|bigr|rm|bf|it|displaystyle)\b\s*", "", s)
    s = re.sub(r"\\([A-Za-z]+)\s*|\\(\|)",
               lambda m: _SYMBOLS.get(m.group(1) or m.group(2), m.group(1) or m.group(2)), s)
    s = re.sub(r"\\[,;:! ]", " ", s)

    def script(m):
        body = m.group(2) if m.group(2) is not None else m.group(3)
        ok, table = (_SUP_OK, _SUP) if m.group(1) == "^" else (_SUB_OK, _SUB)
        if all(ch in ok for ch in body):
            return body.translate(table)
        return m.group(1) + body

    s = re.sub(r"([\^_])(?:\{([^{}]*)\}|(\S))", script, s)
    s = s.replace("{", "").replace("}", "")
    return re.sub(r"\s+", " ", s).strip()


def _unicode_title(title: nodes.Node) -> nodes.Node:
    new = title.deepcopy()
    for m in list(new.findall(nodes.math)):
        m.parent.replace(m, nodes.Text(tex_to_unicode(m.astext())))
    return new


def _titles_in_unicode(app, doctree):
    env = app.env
    for store in (env.titles, env.longtitles):
        node = store.get(env.docname)
        if node is not None and any(True for _ in node.findall(nodes.math)):
            store[env.docname] = _unicode_title(node)


# --- alt text -------------------------------------------------------------------------------------
def _alt_texts(app, doctree, docname):
    title = app.env.titles.get(docname)
    page = title.astext() if title is not None else docname
    for img in doctree.findall(nodes.image):
        if img.get("alt"):
            continue
        fig = img.parent if isinstance(img.parent, nodes.figure) else None
        if fig is not None and fig.get("glued_alt"):
            img["alt"] = fig["glued_alt"]
            continue
        caption = next(iter(fig.findall(nodes.caption)), None) if fig is not None else None
        if caption is not None and caption.astext().strip():
            img["alt"] = re.sub(r"\s+", " ", caption.astext()).strip()
        else:
            img["alt"] = f"Figure computed on the page “{page}”"


# --- stray reprs -----------------------------------------------------------------------------------
#: the text repr of a matplotlib object that a cell's last line returned (``Text(0.5, 0.98, '...')``,
#: ``[<matplotlib.lines.Line2D at 0x...>]``, ``<matplotlib.legend.Legend at 0x...>``)
STRAY_REPR = re.compile(
    r"^\s*(?:(?:Text|Line2D|Legend|Annotation)\(.*\)|\[?<matplotlib\.[\w.]+ (?:at|object at) 0x[0-9a-f]+>"
    r"(?:,\s*<matplotlib\.[\w.]+ (?:at|object at) 0x[0-9a-f]+>)*\]?|<(?:Figure|Axes)[ :][^<>]*>)\s*$",
    re.S)


def _drop_stray_reprs(app, doctree):
    for block in list(doctree.findall(nodes.literal_block)):
        classes = block.get("classes", [])
        if "text_plain" in classes and STRAY_REPR.match(block.astext()):
            parent = block.parent
            parent.remove(block)
            if isinstance(parent, nodes.container) and not parent.children:
                parent.parent.remove(parent)


# --- one copy of each inline script ---------------------------------------------------------------
def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        # the copies differ only in an empty file name: None once, "" the other time
        name = str(getattr(js, "filename", js) or "")
        key = (name, tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    scripts[:] = unique


def setup(app):
    app.connect("doctree-read", _titles_in_unicode, priority=900)  # after the title collector
    app.connect("doctree-read", _drop_stray_reprs)
    app.connect("doctree-resolved", _alt_texts)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
