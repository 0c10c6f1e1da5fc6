"""Tests of physgrad.experiments (chapter 8's experiments): each asserts a property the chapter
states, at a size small enough for CI."""

import math

import pytest
import torch

from physgrad import nn
from physgrad.experiments import heat, multimodality, oscillators, row, machine_info

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def test_library_does_not_import_experiments():
    import subprocess
    import sys

    code = ("import sys, physgrad, physgrad.nn, physgrad.optimize; "
            "print(any(m.startswith('physgrad.experiments') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_multimodality_supervised_averages_sip_picks_branch():
    y, x_sup, _ = multimodality.run("supervised")
    assert x_sup.abs().max().item() < 0.1  # the average of +sqrt(y) and -sqrt(y): ~0
    for method in ("sip", "adam"):
        y, x, res = multimodality.run(method)
        assert (x.abs() - y.sqrt()).abs().max().item() < 0.1, method
        assert bool((x > 0).all()) or bool((x < 0).all()), method
        assert res.final_loss < 1e-3


def test_heat_run_smoke_and_sip_target_of_exact_prediction():
    from physgrad.problems.heat import heat_2d, random_field

    for method in ("adam", "sgd", "sip"):
        res, l1, net, (Xt, Yt) = heat.run(method, n=16, n_train=8, n_test=4, steps=3, batch_size=4,
                                          channels=4, lr=1e-4)
        assert len(res.losses) == 3 and l1 > 0 and math.isfinite(l1)
        assert next(net.parameters()).dtype == torch.float32
    prob = heat_2d(n=16, nu_T=8.0, inv_damping=1e-6)
    x = torch.stack([random_field((16, 16), corr=3.0, seed=s) for s in range(3)])
    y = prob.forward(x)
    torch.testing.assert_close(nn.sip_targets(x, y, y, prob.inverse), x)


def test_oscillator_run_hig_reduces_test_loss():
    res, osc, s_test = oscillators.run("hig", steps=20, lr=0.2, n_train=64, n_test=16, eval_every=19,
                                       line_search=None)
    assert res.eval_losses[-1] < 0.05 * res.eval_losses[0]


def test_result_rows_and_machine_info():
    r = row("heat", "64x64", "adam", "test_x_l1", 3, 125.0)
    assert r == dict(experiment="heat", setting="64x64", method="adam", metric="test_x_l1", value=3.0,
                     published=125.0)
    info = machine_info()
    for key in ("cpu", "cores", "torch_threads", "torch", "numpy", "python", "date", "load_avg_1_5_15"):
        assert key in info


def test_coupling_inverse_is_exact_and_stays_on_the_branch():
    from physgrad.experiments import coupling

    g = torch.Generator().manual_seed(0)
    xi = torch.tensor([1.0, 4.0, 32.0, 32.0], dtype=D)
    phi = torch.tensor([0.0, 0.3, 0.0, math.pi / 4], dtype=D)
    x0 = torch.randn(4, 2, dtype=D, generator=g) * 2
    x_near = x0 + 0.01 * torch.randn(4, 2, dtype=D, generator=g)
    y = coupling.forward(x_near, xi, phi)
    x = coupling.inverse(y, x0, xi, phi)
    torch.testing.assert_close(coupling.forward(x, xi, phi), y)
    torch.testing.assert_close(x, x_near)  # the solution on x0's branch is the nearby one
    # the target is reachable: the inverse from 0 lands on x̂* = (0.3, -0.5)
    xs = coupling.inverse(coupling.target(xi), torch.zeros(4, 2, dtype=D), xi, phi)
    xh = (coupling.rotation(phi) @ xs.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(xh, torch.tensor([[0.3, -0.5]] * 4, dtype=D))


def test_coupling_stacked_networks_train_independently():
    from physgrad.experiments import coupling

    _, alone = coupling.train_grid("adam", [32.0], [math.pi / 4], steps=30)
    _, stacked = coupling.train_grid("adam", [1.0, 32.0, 8.0], [0.0, math.pi / 4, 0.5], steps=30)
    torch.testing.assert_close(stacked[1:2], alone, rtol=1e-12, atol=0)


def test_coupling_adam_stalls_under_rotation_sip_does_not():
    from physgrad.experiments import coupling

    _, adam = coupling.train_grid("adam", [32.0, 32.0], [0.0, math.pi / 4], steps=300)
    _, sip = coupling.train_grid("sip", [32.0, 32.0], [0.0, math.pi / 4], steps=300)
    assert adam[0] < 1e-10 < 1e-6 < adam[1]
    assert sip.max() < 1e-9


def test_two_outputs_loss_terms_and_paper_form():
    from physgrad.experiments import two_outputs

    t, target = two_outputs.data(16)
    net = nn.mlp([1, 7, 2], seed=0)
    for lam in (1.0, 0.01):
        e1, e2 = two_outputs.split_losses(net, t, target, lam)
        L = nn.physics_loss(net, t, target, two_outputs.physics_for(lam)).item()
        assert e1 + e2 == pytest.approx(L, rel=1e-12)
    # the unscaled target: a network outputting y2 = cos(9t)/λ has zero second term
    lam = 0.01
    assert (lam * (target[:, 1] / lam) - target[:, 1]).abs().max() < 1e-15
    res, (e1, e2), _ = two_outputs.run(0.01, "hig-armijo", steps=40, n=32)
    assert res.final_loss < res.losses[0]


def test_two_outputs_variants_and_activation_record():
    """The variants name the method and its step rule; the activation record is the hidden
    tanh layer's mean/std/saturation computed by hand, taken every record_every steps."""
    from physgrad.experiments import two_outputs

    assert two_outputs.SETTINGS["hig-fixed-eta=0.1"] == (
        "hig", dict(lr=0.1, kappa=0.5, truncation=1e-6, line_search=None))
    assert two_outputs.SETTINGS["gn-armijo"][1]["line_search"] == "armijo"
    assert two_outputs.SETTINGS["adam"][1]["lr"] == 1e-3
    res, _, net = two_outputs.run(1.0, "gn", steps=6, n=16, record_every=3)
    assert [a[0] for a in res.activations] == [0, 3, 6]
    t, _ = two_outputs.data(16)
    h = torch.tanh(net[0].weight.detach() @ t.T + net[0].bias.detach()[:, None])
    mean, std, sat = res.activations[-1][2:]
    assert mean == pytest.approx(h.mean().item(), rel=1e-12) and std == pytest.approx(h.std().item(), rel=1e-12)
    assert sat == pytest.approx((h.abs() > 0.99).double().mean().item())


def test_oscillators_published_setting_metrics():
    """Initial states on [0, 1)^4, the recorded curve is the loss over the training states, the
    test loss that over the held-out ones; loss_at reads the curve at a wall time."""
    res, test, osc = oscillators.run_published("hig", steps=8, n_train=64, n_test=16, eval_every=4)
    s_train = osc.sample_states(64, seed=0, uniform=True, low=0.0)
    s_test = osc.sample_states(16, seed=1000, uniform=True, low=0.0)
    assert s_train.min() >= 0
    with torch.no_grad():
        tr = nn.physics_loss(res.model, s_train, s_train, osc.simulate, s_train).item()
        te = nn.physics_loss(res.model, s_test, s_test, osc.simulate, s_test).item()
    assert res.eval_steps == [0, 4, 7] and res.eval_losses[-1] == pytest.approx(tr, rel=1e-12)
    assert test == pytest.approx(te, rel=1e-12) and res.eval_losses[-1] < res.eval_losses[0]
    assert oscillators.loss_at(res, res.times[-1]) == res.eval_losses[-1]
    assert oscillators.loss_at(res, res.times[4]) == res.eval_losses[1]
    assert math.isnan(oscillators.loss_at(res, res.times[-1] + 1.0))


def test_coupling_metrics_by_hand():
    from physgrad.experiments import coupling

    phi = torch.tensor([0.0, 0.7], dtype=D)
    xs = coupling.inverse(coupling.target(torch.tensor([32.0, 32.0], dtype=D)), torch.zeros(2, 2, dtype=D),
                          torch.tensor([32.0, 32.0], dtype=D), phi)
    assert coupling.xhat_error(xs, phi).abs().max() < 1e-14
    assert coupling.xhat_error(xs + torch.tensor([[0.3, 0.4]], dtype=D), phi).tolist() == pytest.approx([0.5, 0.5])
    hist = torch.tensor([[1.0, 1.0], [1e-11, 1e-3], [0.0, 1e-12]], dtype=D)
    assert coupling.steps_to(hist, 1e-10) == [10, 20]
    assert coupling.steps_to(hist[:2], 1e-10) == [10, None]


def test_random_boxes_are_sharp_reproducible_and_periodic():
    a = heat.random_boxes(32, seed=5)
    assert torch.equal(a, heat.random_boxes(32, seed=5)) and not torch.equal(a, heat.random_boxes(32, seed=6))
    assert a.shape == (32, 32) and a.abs().max() > 0
    # piecewise constant: most neighbouring cells are equal, and the jumps are not small
    d = (a - a.roll(1, 0)).abs()
    assert (d == 0).float().mean() > 0.6
    assert d[d > 0].min() > 1e-3


def test_summary_table_reads_results_and_reports_missing(tmp_path):
    import json

    from physgrad.experiments import summary

    rows = summary.table_rows(str(tmp_path))
    assert len(rows) == 4 and all(r["measured"] == "not run yet" for r in rows)
    d = {"machine": {}, "config": {"budget_s": 100.0}, "rows": [
        row("oscillators", "published", "hig", "final_test_loss", 1e-5, None, steps=250),
        row("oscillators", "published", "adam/hig", "final_test_loss_ratio", 40.0, 1e4)]}
    (tmp_path / "nn-oscillators.json").write_text(json.dumps(d))
    osc = summary.table_rows(str(tmp_path))[2]
    assert osc["reproduced"] == "no" and "250" in osc["why"] and osc["measured"].startswith("40")
    assert "| oscillators, published setting |" in summary.markdown([osc])


def test_summary_html_table():
    from physgrad.experiments import summary

    h = summary.html("| a | b |\n|---|---|\n| `x<1` | 2 |")
    assert "<th>a</th><th>b</th>" in h and "<td><code>x&lt;1</code></td><td>2</td>" in h
