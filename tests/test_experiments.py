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


def test_oscillator_run_hig_reduces_test_loss():
    res, osc, s_test = oscillators.run("hig", steps=20, lr=0.2, n_train=64, n_test=16, eval_every=19,
                                       line_search=None)
    assert res.eval_losses[-1] < 0.05 * res.eval_losses[0]


def test_result_rows_and_machine_info():
    r = row("heat", "64x64", "adam", "test_x_l1", 3, 125.0)
    assert r == dict(experiment="heat", setting="64x64", method="adam", metric="test_x_l1", value=3.0,
                     published=125.0, source=None)
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


# ----------------------------------------------------------------------------- heat (SIP paper recipe)
def test_heat_unet_has_the_papers_size_and_mean_fix_holds():
    # PhiFlow 2.1 u_net(1, 1): conv3x3 = 9*cin*cout + cout, batch norm = 2*c, 1x1 output
    conv = lambda cin, cout: 9 * cin * cout + cout
    block = lambda cin, cout: conv(cin, cout) + 2 * cout + conv(cout, cout) + 2 * cout
    expected = block(1, 16) + 3 * block(16, 16) + 3 * block(32, 16) + (16 + 1)
    net = heat.UNet()
    assert sum(p.numel() for p in net.parameters()) == expected == 37697
    y = torch.rand(3, 32, 32, dtype=D)
    x = heat.MeanFixed(net)(y)
    assert x.shape == y.shape and x.dtype == D
    torch.testing.assert_close(x.mean((1, 2)), y.mean((1, 2)), rtol=0, atol=1e-6)  # float32 net output


def test_heat_paper_boxes_match_a_hand_loop():
    n, B = 24, 3
    x = heat.paper_boxes(B, n, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws, in the documented order
    count = (4 + 7 * torch.rand(B, generator=g, dtype=D)).floor()
    pos = (torch.rand(B, 10, 2, generator=g, dtype=D) - 0.5) * (0.8 * n) + 0.5 * n
    half = torch.rand(B, 10, 2, generator=g, dtype=D) * 10
    strength = torch.rand(B, 10, generator=g, dtype=D)
    ref = torch.zeros(B, n, n, dtype=D)
    for b in range(B):
        for i in range(int(count[b])):
            px, py = (min(max(float(pos[b, i, a]), float(half[b, i, a])), n - float(half[b, i, a]))
                      for a in (0, 1))
            for u in range(n):
                for v in range(n):
                    s = max(abs(u + 0.5 - px) - float(half[b, i, 0]), abs(v + 0.5 - py) - float(half[b, i, 1]))
                    ref[b, u, v] += float(strength[b, i]) * min(max(0.5 - s / 1.414214, 0.0), 1.0)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-12)
    assert bool((x >= 0).all()) and x.max() > 0


def test_heat_paper_inverse_inverts_signal_and_damps_noise():
    from physgrad.problems.heat import heat_2d

    n = 32
    prob = heat_2d(n=n, nu_T=8.0)
    u = torch.arange(n, dtype=D)
    x = (torch.cos(2 * math.pi * u / n)[:, None] + 0.5 * torch.sin(2 * math.pi * 2 * u / n)[None, :]
         + 0.3)[None]  # low modes only: far above the noise level
    torch.testing.assert_close(heat.paper_inverse(prob.forward(x)), x, rtol=0, atol=1e-9)
    # a mode at wavenumber (12, 12) of relative size 1e-12 is noise: it must not be amplified by 1/d_k
    d_high = math.exp(-8.0 * (2 * math.pi) ** 2 * 2 * (12 / n) ** 2)
    assert d_high < 1e-30
    noise = 1e-12 * torch.cos(2 * math.pi * 12 * (u[:, None] + u[None, :]) / n)[None]
    dx = heat.paper_inverse(prob.forward(x) + noise)
    assert bool(torch.isfinite(dx).all()) and (dx - x).abs().max() < 1e-6
    # the local inverse keeps an exact prediction
    inv = heat.sip_inverse(prob.forward)
    torch.testing.assert_close(inv(prob.forward(x), x), x, rtol=0, atol=1e-12)


def test_heat_best_linear_filter_recovers_a_known_convolution():
    y = torch.randn(64, 16, 16, dtype=D, generator=torch.Generator().manual_seed(0))
    x = 0.5 * y + y.roll(1, -1) - 0.25 * y.roll(-2, -2)  # a circular convolution of y
    w = heat.best_linear_filter(y, x)
    torch.testing.assert_close(torch.fft.irfft2(torch.fft.rfft2(y) * w, s=(16, 16)), x, rtol=0, atol=1e-10)


def test_heat_error_spectrum_puts_a_cosine_in_its_shell():
    n, A = 32, 0.7
    u = torch.arange(n, dtype=D)
    e = A * torch.cos(2 * math.pi * 3 * u / n)[:, None].expand(n, n)[None]
    spec = heat.error_spectrum(e, torch.zeros_like(e))
    f = torch.fft.fftfreq(n, d=1.0 / n)
    shells = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).round().long()
    count3 = int((shells == 3).sum())
    assert spec[3] == pytest.approx(A * n / count3, rel=1e-12)  # ortho FFT: A*n/2 at (3,0) and (-3,0)
    assert max(v for k, v in enumerate(spec) if k != 3) < 1e-12


def test_heat_floors_and_metric_by_hand():
    y_test, x_test = heat._test_set(n=16, count=8)
    y_fit, x_fit = heat._test_set(n=16, count=32, seed=1)
    fl = heat.floors(y_test, x_test, y_fit, x_fit)
    mean = x_test.mean((1, 2), keepdim=True)
    assert fl["zero"] == pytest.approx((mean - x_test).abs().sum((1, 2)).mean().item(), rel=1e-12)
    assert fl["identity"] == pytest.approx((y_test - x_test).abs().sum((1, 2)).mean().item(), rel=1e-12)
    assert fl["sip_inverse"] < fl["identity"] < fl["zero"]


def test_heat_train_smoke_all_methods():
    y_test, x_test = heat._test_set(n=16, count=4)
    for method in ("adam", "sgd", "sip"):
        model, log = heat.train(method, steps=3, batch=4, n=16, test=(y_test, x_test), eval_every=2)
        assert log["steps"] == 3 and all(math.isfinite(v) for v in log["losses"])
        assert log["curve_steps"] == [0, 2, 3] and all(v > 0 for v in log["curve_x_l1"])
    with pytest.raises(ValueError, match="method"):
        heat.train("hig", steps=1)


def test_heat_committed_results_have_the_row_format():
    import json
    import pathlib

    d = json.loads((pathlib.Path(__file__).parents[1] / "results" / "nn-heat.json").read_text())
    assert {"machine", "config", "command", "rows", "spectra", "curves"} <= set(d)
    assert d["config"]["weights"] == 37697 and "gpu_command" in d["config"]
    for r in d["rows"]:
        assert {"experiment", "setting", "method", "metric", "value", "published", "source"} <= set(r)
        assert r["experiment"] == "heat" and ("cpu" in r["setting"] or "gpu" in r["setting"])
    main = [r for r in d["rows"] if r["setting"] == d["rows"][0]["setting"]]  # the wall-time run
    pub = {r["method"]: r["published"] for r in main if r["metric"] == "x_l1"}
    assert pub["adam"] == 125.0 and pub["sgd"] == 118.9 and pub["sip"] == 50.4
    ratio = next(r for r in main if r["metric"] == "x_l1_ratio")
    x = {r["method"]: r["value"] for r in main if r["metric"] == "x_l1"}
    assert ratio["value"] == pytest.approx(x["adam"] / x["sip"], rel=1e-12)
    for r in d["rows"]:  # a step-matched row, if any, holds as many SIP steps as Adam took
        if r["setting"].startswith("cpu equal steps") and r["metric"] == "x_l1":
            assert r["steps"] == next(q["steps"] for q in main if q["method"] == "adam")


def test_heat_bench_rows_spectra_and_curves_at_tiny_size(monkeypatch):
    monkeypatch.setattr(heat, "CPU_RUN", dict(batch=2, steps=2, time_budget=100.0, eval_every=1))
    out = heat.bench(progress=False)
    x = {r["method"]: r for r in out["rows"] if r["metric"] == "x_l1"}
    assert set(x) == {"adam", "sgd", "sip", "floor: zero", "floor: identity", "floor: sip_inverse",
                      "floor: best_linear"}
    assert all("cpu" in r["setting"] for r in out["rows"]) and x["sip"]["published"] == 50.4
    assert x["adam"]["steps"] == 2 and x["adam"]["value"] == out["curves"]["adam"]["x_l1"][-1]
    assert len(out["spectra"]["sip"]) == len(out["spectra"]["k"]) == 33
    assert out["config"]["weights"] == 37697 and "--full --device cuda" in out["config"]["gpu_command"]
