"""physgrad.widgets: the explorer's logic, headless (Agg, no browser, no kernel).

Sliders are moved programmatically (``Explorer.set`` or the widgets' ``.value``) and the data of
the drawn Line2D objects is checked against closed forms of the toy problem
``P(x) = c·(x_1, x_2^2)``, ``y* = 0``, ``x0 = (3, 3)``:

* ``L = ½ c² (x_1² + x_2⁴)``, so GD's first step is ``Δx = −η c² (x_1, 2 x_2³)``: it grows ×c²;
* Newton, IG and PG are invariant under ``P → cP`` (their trajectories do not depend on c);
* PG with the exact inverse: ``y_k = (1−η)^k y_0``, i.e. ``x_1 = 3(1−η)^k``, ``x_2 = 3(1−η)^{k/2}``.
"""

import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import physgrad  # noqa: E402
from physgrad.problems.toy import toy, toy_x0  # noqa: E402
from physgrad.widgets import Explorer, offline_jshtml  # noqa: E402

METHODS = {"gd": 1e-4, "newton": 0.5, "ig": 0.5, "pg": 0.5}


@pytest.fixture
def ex():
    e = Explorer(toy, dict(METHODS), x0=toy_x0(), steps=10)
    yield e


def xy(line):
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def linear(c):
    """P(x) = c x (one parameter), y* = 2c: GD's factor per step is 1 − η c²."""
    return physgrad.Problem(lambda x: c * x, c * torch.tensor([2.0], dtype=torch.float64),
                            lambda y, x0: y / c, name="cx")


def test_gd_first_step_scales_with_c_squared(ex):
    steps = {}
    for c in (1.0, 10.0, 0.1):
        ex.set(c=c)
        x1, x2 = xy(ex.lines["gd"])
        assert (x1[0], x2[0]) == (3.0, 3.0)
        steps[c] = np.array([x1[1] - x1[0], x2[1] - x2[0]])
        # closed form: Δx = −η c² (x_1, 2 x_2³) at (3, 3)
        np.testing.assert_allclose(steps[c], -1e-4 * c**2 * np.array([3.0, 54.0]), rtol=1e-10)
    np.testing.assert_allclose(steps[10.0] / steps[1.0], [100.0, 100.0], rtol=1e-10)
    np.testing.assert_allclose(steps[0.1] / steps[1.0], [0.01, 0.01], rtol=1e-10)


@pytest.mark.parametrize("method", ["newton", "ig", "pg"])
def test_inverted_methods_do_not_depend_on_c(ex, method):
    ref = [xy(ex.lines[method])]
    for c in (1e-3, 1e-1, 10.0, 1e3):
        ex.set(c=c)
        ref.append(xy(ex.lines[method]))
        # the loss panel shows L/L0, the same for every c
        np.testing.assert_allclose(ex.loss_lines[method].get_ydata(),
                                   ex.runs[method].losses.numpy() / ex.runs[method].losses[0].item())
    for x1, x2 in ref[1:]:
        assert len(x1) == 11
        np.testing.assert_allclose(x1, ref[0][0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(x2, ref[0][1], rtol=1e-9, atol=1e-12)


def test_pg_matches_closed_form_and_y_space_scales(ex):
    for c in (1.0, 50.0):
        ex.set(c=c, eta={"pg": 0.3})
        k = np.arange(11)
        x1, x2 = xy(ex.lines["pg"])
        np.testing.assert_allclose(x1, 3 * 0.7**k, rtol=1e-12)
        np.testing.assert_allclose(x2, 3 * 0.7 ** (k / 2), rtol=1e-12)
        y1, y2 = xy(ex.y_lines["pg"])  # y = P(x) = c (x1, x2²)
        np.testing.assert_allclose(y1, c * 3 * 0.7**k, rtol=1e-12)
        np.testing.assert_allclose(y2, c * 9 * 0.7**k, rtol=1e-12)


def test_steps_slider_sets_number_of_points(ex):
    for n in (1, 5, 37, 3):
        ex.set(steps=n)
        for m in METHODS:
            assert len(ex.lines[m].get_xdata()) == n + 1
            assert len(ex.loss_lines[m].get_xdata()) == n + 1
    # a run extended from the cache equals one computed from scratch
    ex.set(steps=37)
    fresh = Explorer(toy, dict(METHODS), x0=toy_x0(), steps=37, widgets=False)
    for m in METHODS:
        for a, b in zip(xy(ex.lines[m]), xy(fresh.lines[m])):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


def test_method_selector_hides_lines(ex):
    ex.set(methods=["ig", "pg"])
    for m in ("gd", "newton"):
        assert not ex.lines[m].get_visible()
        assert not ex.y_lines[m].get_visible()
        assert not ex.loss_lines[m].get_visible()
        assert m not in ex.runs
    assert all(ex.lines[m].get_visible() for m in ("ig", "pg"))
    legend = [t.get_text() for t in ex._legends[0].get_texts()]
    assert len(legend) == 2 and legend[0].startswith("IG")
    ex.set(methods=METHODS)
    assert all(ex.lines[m].get_visible() for m in METHODS)


def test_diverging_gd_is_truncated_not_an_error(ex):
    ex.set(c=100.0, eta={"gd": 0.01})  # far above the stability limit ~ 2/(54 c²)
    run = ex.runs["gd"]
    assert not run.ok and "diverged" in run.message
    x1, x2 = xy(ex.lines["gd"])
    assert 1 < len(x1) < 11 and np.isfinite(x1).all() and np.isfinite(x2).all()
    assert "diverged" in ex.loss_lines["gd"].get_label()
    assert "GD" in ex.status.value and "diverged" in ex.status.value
    # the other methods are unaffected
    assert ex.runs["ig"].ok and ex.runs["ig"].nit == 10


def test_failing_inverse_keeps_the_steps_before_it(ex):
    # η > 1 asks PG for y_2 = (1 − η) y_2 < 0: no real pre-image under c x_2²
    ex.set(eta={"pg": 1.5})
    run = ex.runs["pg"]
    assert not run.ok and "InverseSimulatorError" in run.message and run.nit == 0
    assert len(ex.lines["pg"].get_xdata()) == 1


def test_widgets_drive_the_state(ex):
    assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    png0 = ex.image.value
    ex.c_slider.value = 10.0
    assert ex.c == pytest.approx(10.0)
    x1, _ = xy(ex.lines["gd"])
    assert x1[1] - x1[0] == pytest.approx(-1e-4 * 100 * 3, rel=1e-6)
    assert ex.image.value != png0
    ex.eta_sliders["gd"].value = 1e-5
    assert ex.eta["gd"] == pytest.approx(1e-5)
    ex.steps_slider.value = 4
    assert len(ex.lines["ig"].get_xdata()) == 5
    ex.method_select.value = ("gd",)
    assert ex.active == ("gd",) and not ex.lines["pg"].get_visible()
    # set() moves the sliders too, without a second recomputation
    ex.set(c=0.5, steps=7)
    assert ex.c_slider.value == pytest.approx(0.5) and ex.steps_slider.value == 7
    bundle = ex._repr_mimebundle_()
    assert bundle["text/plain"] == "Explorer(toy (c=0.5): GD, Newton, IG, PG; c=0.5, steps=7)"
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_invalid_settings_are_rejected_and_state_kept(ex):
    with pytest.raises(ValueError, match="c must be positive"):
        ex.set(c=-1.0)
    with pytest.raises(ValueError, match="steps"):
        ex.set(steps=0)
    with pytest.raises(ValueError, match="no η slider"):
        ex.set(eta={"bfgs": 1.0})
    assert ex.c == 1.0 and ex.steps == 10
    with pytest.raises(ValueError, match="unknown method"):
        Explorer(toy, {"sgd": 0.1}, x0=toy_x0())


def test_one_parameter_problem():
    e = Explorer(linear, {"gd": 0.5, "ig": 0.5}, x0=torch.tensor([-1.0], dtype=torch.float64),
                 xlim=(-2, 4), steps=6, widgets=False)
    k = np.arange(7)
    for c in (1.0, 3.0):
        e.set(c=c)
        x_ig, _ = xy(e.lines["ig"])  # x_k = 2 − 3 (1 − η)^k for every c
        np.testing.assert_allclose(x_ig, 2 - 3 * 0.5**k, rtol=1e-12)
        it, y = xy(e.y_lines["ig"])  # y-space panel: y_k over the iteration
        np.testing.assert_allclose(it, k)
        np.testing.assert_allclose(y, c * (2 - 3 * 0.5**k), rtol=1e-12)
    # GD's factor per step is 1 − η c² = −3.5 at c = 3: |x − 2| grows 3.5× per step
    x_gd, _ = xy(e.lines["gd"])
    np.testing.assert_allclose(x_gd, 2 - 3 * (-3.5) ** k, rtol=1e-12)


def test_animation_is_offline_and_restores_state(ex):
    ex.set(c=2.0)
    before = xy(ex.lines["gd"])
    anim = ex.animation(frames=3, dpi=40)
    html = anim.html
    assert anim.frames == 3 and anim.values == pytest.approx([1e-3, 1.0, 1e3])
    assert len(re.findall(r"data:image/png;base64,", html)) == 3
    assert re.search(r"<input[^>]*type=\"range\"", html)
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "fa fa-" not in html
    assert ex.c == 2.0
    ex.fig.canvas.draw()  # a later full draw must not start the animation's timer
    ex.set(c=3.0)
    ex.set(c=2.0)
    for a, b in zip(before, xy(ex.lines["gd"])):
        np.testing.assert_array_equal(a, b)
    # the same animation twice: the same frames, ids differing only in the page counter
    again = ex.animation(frames=3, dpi=40).html
    strip = lambda h: re.sub(r"([0-9a-f]{16})\d{3}", r"\1", h)  # noqa: E731
    assert strip(again) == strip(html)
    eta_anim = ex.animation(sweep="eta:gd", values=[1e-5, 1e-4], dpi=40)
    assert eta_anim.frames == 2 and ex.eta["gd"] == 1e-4
    with pytest.raises(ValueError, match="sweep"):
        ex.animation(sweep="eta:bfgs")


def test_offline_jshtml_rejects_what_it_cannot_clean():
    with pytest.raises(RuntimeError, match="external"):
        offline_jshtml('<script src="https://cdn.example.org/x.js"></script>')


# ------------------------------------------------------------------------------------------
# The kernel-free figures (physgrad.interactive) show the Explorer's numbers, and the static
# website shows no dead ipywidgets controls.

def test_static_figure_shows_the_explorers_numbers():
    """The same (c, η) in the live Explorer and in the stored grid of the static figure give the
    same trajectories (same factory, same run_method)."""
    import json as _json

    from physgrad import interactive

    fig = interactive.comparison_figure(steps=10, lc=(0.0, 1.0, 1.0), le=(-3.0, -2.0, 1.0),
                                        eta=(0.5, 0.6, 0.1), methods=("gd", "newton", "ig", "pg"))
    e = Explorer(toy, {"gd": 1e-3, "newton": 0.5, "ig": 0.5, "pg": 0.5}, x0=toy_x0(), steps=10,
                 options={"newton": {"line_search": None}}, widgets=False)
    labels = {"gd": "GD", "newton": "Newton", "ig": "IG", "pg": "PG"}
    for a, b_lr, b in ((0.0, -3.0, 0.5), (1.0, -2.0, 0.6)):
        e.set(c=10 ** a, eta={"gd": 10 ** b_lr, "newton": b, "ig": b, "pg": b})
        for m, label in labels.items():
            row = next(r for r in fig.rows() if r["s"] == label and r["a"] == a
                       and r["b"] == (b_lr if m == "gd" else b))
            x1, x2 = xy(e.lines[m])
            np.testing.assert_allclose(row["x"], x1, rtol=1e-11, atol=1e-12)
            np.testing.assert_allclose(row["y"], x2, rtol=1e-11, atol=1e-12)
    doc = _json.loads(fig.to_json())  # strict JSON: no NaN or infinity
    assert sorted(doc["layouts"]) == ["narrow-dark", "narrow-light", "wide-dark", "wide-light"]
    for spec in doc["layouts"].values():
        assert [p["name"] for p in spec["params"]] == ["lc", "le", "eta"]
        assert all(p["bind"]["input"] == "range" for p in spec["params"])


def test_gd_figure_first_step_closed_form():
    """Chapter 2's stored GD paths: first step −η c² (3, 54) from (3, 3); the map holds
    L/L0 after the last step; the drawn bounds are η = 1/(9c²) and η = 2/c²."""
    from physgrad import interactive

    fig = interactive.gd_figure(steps=5, lc=(-1.0, 1.0, 1.0), le=(-3.0, -2.0, 1.0))
    assert len(fig.rows("runs")) == 3 * 2 == len(fig.rows("map"))
    for r in fig.rows("runs"):
        c2, eta = 10 ** (2 * r["a"]), 10 ** r["b"]
        step = [r["x"][1] - 3.0, r["y"][1] - 3.0]
        np.testing.assert_allclose(step, [-eta * c2 * 3.0, -eta * c2 * 54.0], rtol=1e-9)
        cell = next(m for m in fig.rows("map") if (m["a"], m["b"]) == (r["a"], r["b"]))
        assert cell["v"] == pytest.approx(max(r["L"][-1], 1e-16), rel=1e-9)
    start, x1 = sorted({p["s"] for p in fig.rows("bounds")}, key=lambda s: "9" not in s)
    for p in fig.rows("bounds"):
        rhs = -np.log10(9.0) if p["s"] == start else np.log10(2.0)
        assert p["b"] == pytest.approx(rhs - 2 * p["a"], abs=1e-11)


def test_static_html_is_offline_and_self_contained():
    from pathlib import Path

    from physgrad import interactive

    html = interactive.slope_figure(eta=(0.5, 0.6, 0.1), s=(2.0, 2.5, 0.5)).html()
    assert "_static/sliders.js" in html
    loader = (Path(__file__).resolve().parents[1] / "assets" / "sliders.js").read_text()
    assert "_static/vega/" in loader and "vega-lite.min" in loader
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", loader)
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", html), "no URL may be fetched"
    assert "</script" not in html.split('type="application/json"')[1].split("</script>")[0]


def test_comparison_notebook_hides_live_explorers_on_the_website():
    """Every cell of notebooks/05-comparison that displays an Explorer is tagged remove-output
    (a frozen slider would do nothing on the static page) and the notebook has no to_jshtml
    animation left."""
    import json as _json
    from pathlib import Path

    nb = _json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "05-comparison.ipynb")
                     .read_text())
    shown = [c for c in nb["cells"] if c["cell_type"] == "code"
             and re.search(r"^\w+_explorer\s*$", "".join(c["source"]), re.M)]
    assert len(shown) == 4
    for c in shown:
        assert "remove-output" in c["metadata"].get("tags", []), "".join(c["source"])[:60]
    assert not any(".animation(" in "".join(c["source"]) for c in nb["cells"])
