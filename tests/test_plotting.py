"""The book's figure style (physgrad.plotting): one colour per method, distinct looks for
repeated runs, legible text at the displayed size, and multi-panel layouts for phones."""

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib as mpl  # noqa: E402
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from physgrad import optimize, plotting  # noqa: E402
from physgrad.problems.toy import toy, toy_x0  # noqa: E402

# every method the book draws (chapters 2-8 and the benchmark)
BOOK_METHODS = ["gd", "adam", "sgd", "newton", "bfgs", "lbfgs", "scipy-lbfgsb", "torch-lbfgs",
                "ig", "ig-auto", "pg", "hig", "gn", "sip", "supervised", "adagrad", "rmsprop",
                "adadelta"]
# the book's text column, in CSS px, and the smallest text a reader should have to read there
COLUMN_PX = 772
MIN_TEXT_PX = 9


def _lab(col):
    """CIELAB (D65) of a matplotlib colour: a perceptual space for colour differences."""
    rgb = np.array(mcolors.to_rgb(col))
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ lin / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _delta_e(a, b):
    return float(np.linalg.norm(_lab(a) - _lab(b)))


def test_lab_reference_values():
    # sanity of the helper itself: white, black and sRGB red (CIE reference values)
    assert np.allclose(_lab("white"), [100, 0, 0], atol=0.1)
    assert np.allclose(_lab("black"), [0, 0, 0], atol=0.1)
    assert np.allclose(_lab("#ff0000"), [53.24, 80.09, 67.20], atol=0.2)


def test_every_book_method_has_its_own_colour():
    missing = [m for m in BOOK_METHODS if m not in plotting.METHOD_COLORS]
    assert not missing, f"methods without a colour: {missing}"
    cols = [mcolors.to_hex(plotting.color(m)) for m in BOOK_METHODS]
    assert len(set(cols)) == len(cols), "two methods share a colour"
    assert all(m in plotting.METHOD_LABELS for m in plotting.METHOD_COLORS)
    # unknown names are grey, distinct from every method
    assert mcolors.to_hex(plotting.color("no-such-method")) not in cols


def test_method_colours_are_perceptibly_different():
    worst = min(((_delta_e(plotting.color(a), plotting.color(b)), a, b)
                 for a, b in itertools.combinations(BOOK_METHODS, 2)))
    assert worst[0] > 12, f"{worst[1]} and {worst[2]} look alike (ΔE = {worst[0]:.1f})"
    # the pairs the review names: IG/PG, GN/HIG/SIP, BFGS/L-BFGS drawn in one figure
    for a, b in [("ig", "pg"), ("gn", "hig"), ("gn", "sip"), ("hig", "sip"), ("bfgs", "lbfgs"),
                 ("gd", "adam"), ("newton", "ig")]:
        assert _delta_e(plotting.color(a), plotting.color(b)) > 25, (a, b)
    # and every colour stands out from the white background
    for m in BOOK_METHODS:
        assert _delta_e(plotting.color(m), "white") > 25, m


def test_aliases():
    assert plotting.color("lm") == plotting.color("ig-auto")
    assert plotting.color("L-BFGS".lower()) == plotting.color("lbfgs")


@pytest.mark.parametrize("method", BOOK_METHODS)
def test_repeated_runs_look_different(method):
    looks = [plotting.styles(method, k) for k in range(5)]
    assert looks[0]["color"] == mcolors.to_hex(plotting.color(method))
    assert looks[0]["linestyle"] == "-"
    assert len({(s["color"], str(s["linestyle"])) for s in looks}) == 5
    assert len({str(s["linestyle"]) for s in looks}) == 5
    for a, b in itertools.combinations(looks, 2):
        assert a["color"] != b["color"]
    # shades stay visible on white and stay in the method's hue family
    for s in looks[1:]:
        assert _delta_e(s["color"], "white") > 10
    assert plotting.styles(method, 5) == plotting.styles(method, 0)


def test_style_is_applied_on_import_and_by_use_style():
    mpl.rcdefaults()
    assert mpl.rcParams["font.size"] != plotting.STYLE["font.size"]
    plotting.use_style()
    for key, value in plotting.STYLE.items():
        assert mpl.rcParams[key] == (list(value) if isinstance(value, tuple) else value) or \
            key == "axes.prop_cycle" and mpl.rcParams[key] == value, key
    assert mpl.rcParams["savefig.dpi"] >= 2 * mpl.rcParams["figure.dpi"]


def test_use_style_selects_2x_png_in_a_kernel(monkeypatch):
    import IPython
    import matplotlib_inline.backend_inline as inline

    calls = []
    monkeypatch.setattr(inline, "set_matplotlib_formats", lambda *f, **kw: calls.append(f))
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    plotting.use_style()
    assert calls == []  # no kernel: nothing to configure

    class Shell:
        kernel = object()

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    plotting.use_style()
    assert calls == [("retina",)]


def _texts_px(fig):
    """Font size in CSS px of every visible text of a figure as the book shows it (the image
    is displayed at figure.dpi px per inch, i.e. its 1x size)."""
    fig.canvas.draw()
    dpi = mpl.rcParams["figure.dpi"]
    out = []
    for t in fig.findobj(matplotlib.text.Text):
        if t.get_visible() and t.get_text().strip():
            out.append((t.get_fontsize() * dpi / 72, t.get_text()))
    return out


@pytest.fixture()
def two_gd_runs_and_pg():
    plotting.use_style()
    prob = toy()
    runs = [optimize(prob, toy_x0(), "gd", steps=20, step_size=eta) for eta in (0.005, 0.02)]
    runs.append(optimize(prob, toy_x0(), "pg", steps=5))
    yield prob, runs
    plt.close("all")


def test_compare_figure_fits_the_column_and_text_is_legible(two_gd_runs_and_pg):
    prob, runs = two_gd_runs_and_pg
    fig, axes = plotting.compare(prob, runs)
    width_px = fig.get_figwidth() * mpl.rcParams["figure.dpi"]
    assert width_px <= COLUMN_PX
    sizes = _texts_px(fig)
    assert sizes and min(sizes)[0] >= MIN_TEXT_PX, min(sizes)
    # two rows: x-space and y-space side by side, the loss panel below them
    (x0, y0), (x1, y1), (x2, y2) = [ax.get_position().p0 for ax in axes]
    assert y0 == pytest.approx(y1) and x1 > x0 and y2 < y0
    assert axes[2].get_position().width > 1.5 * axes[0].get_position().width


def test_repeated_runs_in_one_figure_differ(two_gd_runs_and_pg):
    prob, runs = two_gd_runs_and_pg
    fig, axes = plotting.compare(prob, runs)
    for ax in axes:
        gd = [ln for ln in ax.get_lines() if ln.get_label().startswith("GD")]
        assert len(gd) == 2
        assert gd[0].get_color() != gd[1].get_color()
        assert gd[0].get_linestyle() != gd[1].get_linestyle()
        pg = [ln for ln in ax.get_lines() if ln.get_label().startswith("PG")]
        assert [ln.get_color() for ln in pg] == [mcolors.to_hex(plotting.color("pg"))]


def test_shared_legend_covers_no_data(two_gd_runs_and_pg):
    prob, runs = two_gd_runs_and_pg
    fig, axes = plotting.compare(prob, runs)
    fig.canvas.draw()
    assert all(ax.get_legend() is None for ax in axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][:3] == [plotting.label(r) for r in runs]
    box = legend.get_window_extent()
    for ax in axes:
        assert not box.overlaps(ax.get_window_extent()), "the legend covers a panel"


@pytest.mark.parametrize("n, rows", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)])
def test_panels_have_at_most_two_per_row(n, rows):
    plotting.use_style()
    fig, axes = plotting.panels(n, height=2.5)
    try:
        assert len(axes) == n
        assert fig.get_figwidth() == plotting.COLUMN_WIDTH
        assert fig.get_figheight() == pytest.approx(2.5 * rows)
        fig.canvas.draw()
        tops = sorted({round(ax.get_position().y1, 3) for ax in axes})
        assert len(tops) == rows
        if n > 1 and n % 2:  # the odd panel out spans the bottom row
            assert axes[-1].get_position().width > 1.5 * axes[0].get_position().width
    finally:
        plt.close(fig)
    with pytest.raises(ValueError):
        plotting.panels(0)


def test_losses_plot_uses_method_colour_and_keeps_zero_losses():
    plotting.use_style()
    prob = toy()
    res = optimize(prob, toy_x0(), "pg", steps=3)
    fig, ax = plt.subplots()
    try:
        (line,) = plotting.plot_losses(ax, [res], legend=False)
        assert line.get_color() == mcolors.to_hex(plotting.color("pg"))
        assert np.all(line.get_ydata() > 0)  # exact zeros are lifted to draw on a log axis
        assert torch.is_tensor(res.losses)
    finally:
        plt.close(fig)


def test_one_column_stacks_side_by_side_panels_and_keeps_their_content():
    fig, ax = plt.subplot_mosaic([["a", "b"], ["c", "c"]], figsize=(7, 5), layout="constrained")
    for k, name in enumerate("abc"):
        ax[name].plot([0, 1, 2], [k, k + 1, k * k])
        ax[name].set_title(name)
    fig.legend(["a", "b", "c"], loc="outside lower center", ncols=3)
    before = [a.get_subplotspec().get_geometry() for a in plotting._panel_axes(fig)]
    narrow = plotting.one_column(fig)
    try:
        panels = plotting._panel_axes(narrow)
        assert [a.get_title() for a in panels] == ["a", "b", "c"]  # reading order kept
        specs = [a.get_subplotspec() for a in panels]
        assert all(s.colspan.start == 0 and s.colspan.stop == 1 for s in specs)  # one column
        assert [s.rowspan.start for s in specs] == [0, 1, 2]
        for k, a in enumerate(panels):
            np.testing.assert_array_equal(a.lines[0].get_ydata(), [k, k + 1, k * k])
        assert narrow.get_figwidth() == pytest.approx(plotting.PHONE_WIDTH)
        assert narrow.legends[0]._ncols == 2 and fig.legends[0]._ncols == 3  # legend reflowed
        narrow.canvas.draw()  # the stacked panels do not overlap
        boxes = [a.get_position() for a in panels]
        assert all(lo.y1 <= hi.y0 + 1e-9 for hi, lo in zip(boxes, boxes[1:]))
        # the original figure is untouched
        assert [a.get_subplotspec().get_geometry() for a in plotting._panel_axes(fig)] == before
        assert fig.get_figwidth() == pytest.approx(7)
    finally:
        plt.close(fig)
        plt.close(narrow)


def test_one_column_is_none_for_a_figure_without_panels_side_by_side():
    fig, axes = plotting.panels(1)
    fig2, axes2 = plt.subplots(2, 1, layout="constrained")
    try:
        assert plotting.one_column(fig) is None
        assert plotting.one_column(fig2) is None
    finally:
        plt.close(fig)
        plt.close(fig2)
