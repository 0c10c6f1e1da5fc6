"""Tests of physgrad.nn (chapter 8): per-sample Jacobians, HIG/GN steps, SIP, the demos."""

import pytest
import torch

from physgrad import nn
from physgrad.errors import MemoryBudgetError, MissingInverseError

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """The networks here are tiny: one thread is faster and avoids oversubscribing shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _phys(x):
    # a small non-linear simulator, batched: (B, 2) -> (B, 3)
    return torch.stack([x[:, 0] ** 2, torch.sin(x[:, 1]), x[:, 0] * x[:, 1]], dim=1)


def _cond_phys(x, c):
    return x * c[:, :2] + c[:, 2:]


def test_stacked_jacobian_matches_loop():
    net = nn.mlp([3, 6, 2], seed=3)
    inp = torch.randn(7, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    J, y = nn.stacked_jacobian(net, inp, _phys)
    J_loop = nn.stacked_jacobian_loop(net, inp, _phys)
    p = sum(q.numel() for q in net.parameters())
    assert J.shape == (7 * 3, p)
    torch.testing.assert_close(J, J_loop, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, _phys(net(inp)).reshape(-1).detach())


def test_stacked_jacobian_with_condition_matches_manual_loop():
    net = nn.mlp([4, 5, 2], seed=0)
    g = torch.Generator().manual_seed(2)
    inp = torch.randn(4, 4, dtype=D, generator=g)
    cond = torch.randn(4, 4, dtype=D, generator=g)
    J, _ = nn.stacked_jacobian(net, inp, _cond_phys, condition=cond)
    # independent loop: autograd row by row
    rows = []
    for b in range(4):
        out = _cond_phys(net(inp[b:b + 1]), cond[b:b + 1]).reshape(-1)
        for i in range(out.numel()):
            gr = torch.autograd.grad(out[i], list(net.parameters()), retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in gr]))
    torch.testing.assert_close(J, torch.stack(rows), rtol=1e-12, atol=1e-12)


def test_hig_kappa_one_equals_gauss_newton_lstsq():
    net = nn.mlp([2, 4, 2], seed=5)  # 22 weights
    g = torch.Generator().manual_seed(0)
    inp = torch.randn(10, 2, dtype=D, generator=g)  # 30 residuals, 22 weights
    tgt = torch.randn(10, 3, dtype=D, generator=g)
    J = nn.stacked_jacobian_loop(net, inp, _phys)
    r = (_phys(net(inp)) - tgt).reshape(-1).detach()
    # J has rank 20 (two exact null directions): minimum-norm least squares via LAPACK gelsd
    d_gn = -torch.linalg.lstsq(J, r.unsqueeze(1), rcond=1e-10, driver="gelsd").solution.squeeze(1)
    theta0 = torch.cat([q.detach().reshape(-1) for q in net.parameters()])
    # the spectral step itself
    torch.testing.assert_close(nn.inverted_step(J, r, 1.0, kappa=1.0, truncation=1e-10), d_gn,
                               rtol=1e-8, atol=1e-10)
    # one training step of method="hig" with kappa=1 and of method="gn"
    for method, kw in (("hig", {"kappa": 1.0}), ("gn", {})):
        net2 = nn.mlp([2, 4, 2], seed=5)
        nn.train(net2, inp, tgt, _phys, method, steps=1, lr=1.0, truncation=1e-10, **kw)
        theta1 = torch.cat([q.detach().reshape(-1) for q in net2.parameters()])
        torch.testing.assert_close(theta1 - theta0, d_gn, rtol=1e-8, atol=1e-10)


def test_hig_step_is_half_inverse_and_truncates():
    g = torch.Generator().manual_seed(4)
    U, _ = torch.linalg.qr(torch.randn(6, 3, dtype=D, generator=g))
    V, _ = torch.linalg.qr(torch.randn(5, 3, dtype=D, generator=g))
    S = torch.tensor([4.0, 1.0, 1e-9], dtype=D)
    J = U @ torch.diag(S) @ V.T
    r = torch.randn(6, dtype=D, generator=g)
    d = nn.inverted_step(J, r, 0.5, kappa=0.5, truncation=1e-6)
    expect = -0.5 * V[:, :2] @ ((U[:, :2].T @ r) / S[:2].sqrt())
    torch.testing.assert_close(d, expect)
    # kappa = -1 is plain gradient descent on 1/2||r||^2 (nothing dropped)
    torch.testing.assert_close(nn.inverted_step(J, r, 0.1, kappa=-1.0, truncation=0.0), -0.1 * J.T @ r)


def test_sip_proxy_gradient_matches_analytic_on_linear_problem():
    g = torch.Generator().manual_seed(7)
    A = torch.randn(3, 3, dtype=D, generator=g) + 3 * torch.eye(3, dtype=D)
    net = torch.nn.Linear(2, 3, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(3, 2, dtype=D, generator=g))
    c = torch.randn(5, 2, dtype=D, generator=g)
    ystar = torch.randn(5, 3, dtype=D, generator=g)
    phys = lambda x: x @ A.T  # noqa: E731
    inv = lambda y, x0: torch.linalg.solve(A, y.T).T  # noqa: E731  exact inverse of a linear P
    eta = 0.7
    L = nn.sip_loss(net, c, ystar, phys, inv, y_step=eta)
    (gW,) = torch.autograd.grad(L, net.weight)
    # analytic: x_tilde = x + eta A^{-1}(y* - A x), dL/dW = 1/B sum_b (x_b - x_tilde_b) c_b^T
    x = c @ net.weight.detach().T
    dx = eta * torch.linalg.solve(A, (ystar - x @ A.T).T).T  # x_tilde - x
    torch.testing.assert_close(gW, (-dx).T @ c / 5)
    # and it is NOT the differentiable-physics gradient J^T r (it has the inverse in it)
    Lp = nn.physics_loss(net, c, ystar, phys)
    (gP,) = torch.autograd.grad(Lp, net.weight)
    assert (gP - gW).abs().max() > 1e-3


def test_multimodality_supervised_averages_sip_picks_branch():
    y, x_sup, _ = nn.multimodality_demo("supervised")
    assert x_sup.abs().max().item() < 0.1  # the average of +sqrt(y) and -sqrt(y): ~0
    for method in ("sip", "adam"):
        y, x, res = nn.multimodality_demo(method)
        # on a branch: |x| ~ sqrt(y) everywhere, and one sign throughout
        assert (x.abs() - y.sqrt()).abs().max().item() < 0.1, method
        assert bool((x > 0).all()) or bool((x < 0).all()), method
        assert res.final_loss < 1e-3


def test_memory_budget_error_before_allocation():
    net = nn.mlp([2, 64, 64, 2], seed=0)
    inp = torch.zeros(1000, 2, dtype=D)
    with pytest.raises(MemoryBudgetError, match="GiB"):
        nn.stacked_jacobian(net, inp, _phys, max_jacobian_bytes=10_000_000)
    with pytest.raises(MemoryBudgetError):
        nn.train(net, inp, torch.zeros(1000, 3, dtype=D), _phys, "hig", steps=1,
                 max_jacobian_bytes=10_000_000)
    assert nn.jacobian_bytes(1000, 3, 4482, torch.float32) == 1000 * 3 * 4482 * 4


def test_train_records_and_is_reproducible_and_follows_dtype():
    def run(seed):
        net = nn.mlp([1, 8, 1], seed=1, dtype=torch.float32)
        x = torch.linspace(-1, 1, 32).reshape(-1, 1)
        return nn.train(net, x, torch.sin(3 * x), lambda z: z, "adam", steps=20, lr=1e-2,
                        batch_size=8, seed=seed), net

    (r1, n1), (r2, _), (r3, _) = run(0), run(0), run(1)
    assert len(r1.losses) == len(r1.times) == 20
    assert r1.losses == r2.losses and r1.losses != r3.losses
    assert all(b >= a for a, b in zip(r1.times, r1.times[1:]))
    assert next(n1.parameters()).dtype == torch.float32


def test_train_argument_errors():
    net = nn.mlp([1, 2, 1], seed=0)
    x = torch.zeros(4, 1, dtype=D)
    with pytest.raises(ValueError):
        nn.train(net, x, x, lambda z: z, "nope")
    with pytest.raises(ValueError):
        nn.train(net, x, x, lambda z: z, "supervised")
    with pytest.raises(MissingInverseError):
        nn.train(net, x, x, lambda z: z, "sip")


def test_hig_fits_both_outputs_when_one_is_scaled_down():
    # a miniature of experiment 2: the HIG step is invariant to scaling an output by lam
    x = torch.linspace(-1, 1, 16, dtype=D).reshape(-1, 1)
    for lam in (1.0, 0.01):
        tgt = torch.cat([torch.sin(2 * x), lam * torch.cos(2 * x)], 1)
        scale = torch.tensor([1.0, lam], dtype=D)
        net = nn.mlp([1, 8, 2], seed=0)
        res = nn.train(net, x, tgt, lambda z: z * scale, "hig", steps=60, lr=0.5)
        rel = 0.5 * ((net(x) - tgt / scale) ** 2).sum().item() / 16
        assert rel < 1e-3, lam


def test_chapter8_exercise_answers():
    # exercise 1: the supervised optimum of labels +-2 is 0, physics loss 8; SIP's inverse from 0.5
    labels = torch.tensor([2.0, -2.0], dtype=D)
    xs = torch.linspace(-3, 3, 601, dtype=D)
    sq = 0.5 * ((xs[:, None] - labels) ** 2).sum(1)
    x_best = xs[sq.argmin()].item()
    assert x_best == pytest.approx(0.0, abs=1e-12)
    assert 0.5 * (x_best ** 2 - 4.0) ** 2 == pytest.approx(8.0)
    from physgrad.nn import _square_inverse
    assert _square_inverse(torch.tensor([4.0], dtype=D), torch.tensor([0.5], dtype=D)).item() == 2.0
    # exercise 2: the spectral step scales like lambda^(1 - kappa)
    g = torch.Generator().manual_seed(0)
    J = torch.randn(6, 9, dtype=D, generator=g)
    r = torch.randn(6, dtype=D, generator=g)
    lam = 0.01
    for kappa, factor in ((-1.0, 1e-4), (0.5, 0.1), (1.0, 1.0)):
        d1 = nn.inverted_step(J, r, 1.0, kappa=kappa, truncation=0.0)
        d2 = nn.inverted_step(lam * J, lam * r, 1.0, kappa=kappa, truncation=0.0)
        torch.testing.assert_close(d2, factor * d1)
    # exercise 3: oscillator network size and Jacobian memory
    net = nn.mlp([4, 32, 32, 48], seed=0)
    p = sum(q.numel() for q in net.parameters())
    assert p == 2800
    assert nn.jacobian_bytes(32, 4, p, torch.float64) == 2_867_200
    budget = 2 * 1024 ** 3
    assert nn.jacobian_bytes(23967, 4, p) <= budget < nn.jacobian_bytes(23968, 4, p)


def test_heat_demo_smoke_and_sip_target_of_exact_prediction():
    pytest.importorskip("physgrad.problems.heat")
    from physgrad.problems.heat import heat_2d, random_field

    for method in ("adam", "sgd", "sip"):
        res, l1, net, (Xt, Yt) = nn.heat_demo(method, n=16, n_train=8, n_test=4, steps=3, batch_size=4,
                                             channels=4, lr=1e-4)
        assert len(res.losses) == 3 and l1 > 0 and torch.isfinite(torch.tensor(l1))
        assert next(net.parameters()).dtype == torch.float32
    # a prediction that already is the answer gets itself back as SIP target
    prob = heat_2d(n=16, nu_T=8.0, inv_damping=1e-6)
    x = torch.stack([random_field((16, 16), corr=3.0, seed=s) for s in range(3)])
    y = prob.forward(x)
    xt = nn.sip_targets(x, y, y, prob.inverse)
    torch.testing.assert_close(xt, x)


def test_oscillator_demo_hig_reduces_test_loss():
    res, osc, s_test = nn.oscillator_demo("hig", steps=20, lr=0.2, n_train=64, n_test=16, eval_every=19)
    assert res.eval_losses[-1] < 0.05 * res.eval_losses[0]
