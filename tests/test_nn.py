"""Tests of physgrad.nn (chapter 8): per-sample Jacobians, HIG/GN steps, SIP, the optimizer
objects, and the validation of nn.train (the experiments are in test_experiments.py)."""

import math

import numpy as np
import pytest
import torch

from physgrad import nn
from physgrad.errors import MemoryBudgetError, MissingInverseError, NonFiniteError, ShapeError

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


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
        nn.train(net2, inp, tgt, _phys, method, steps=1, lr=1.0, truncation=1e-10,
                 line_search=None, **kw)
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
    from physgrad.experiments.multimodality import square_inverse
    assert square_inverse(torch.tensor([4.0], dtype=D), torch.tensor([0.5], dtype=D)).item() == 2.0
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


# ----------------------------------------------------------------------------- optimizer objects
def _hand_loop(make, method, steps=6, bs=4, **train_kw):
    """``train`` against a hand-written loop over the optimizer object, same batches."""
    g = torch.Generator().manual_seed(11)
    inp = torch.randn(12, 2, dtype=D, generator=g)
    tgt = _phys(torch.randn(12, 2, dtype=D, generator=g))
    net_a, net_b = nn.mlp([2, 5, 2], seed=2), nn.mlp([2, 5, 2], seed=2)
    nn.train(net_a, inp, tgt, _phys, method, steps=steps, batch_size=bs, seed=3, **train_kw)
    opt = make(net_b)
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    perm, pos = torch.randperm(12, generator=gen), 0
    losses = []
    for _ in range(steps):
        if pos + bs > 12:
            perm, pos = torch.randperm(12, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        losses.append(opt.step(inp[idx], tgt[idx]))
    return net_a, net_b, losses


@pytest.mark.parametrize("method", ["adam", "sgd", "sip", "gn", "hig"])
def test_train_equals_hand_written_loop_over_optimizer_objects(method):
    def inv(y, x0):  # analytic local inverse of _phys from its first two outputs
        return torch.stack([torch.sign(x0[:, 0]) * y[:, 0].clamp_min(0).sqrt(),
                            torch.asin(y[:, 1].clamp(-1, 1))], 1)
    makers = {
        "adam": lambda m: nn.DP(m, _phys, torch.optim.Adam(m.parameters(), lr=1e-2)),
        "sgd": lambda m: nn.DP(m, _phys, torch.optim.SGD(m.parameters(), lr=1e-2)),
        "sip": lambda m: nn.SIP(m, _phys, inv, torch.optim.Adam(m.parameters(), lr=1e-2), y_step=0.5),
        "gn": lambda m: nn.GN(m, _phys, lr=0.5),
        "hig": lambda m: nn.HIG(m, _phys, lr=1.0),
    }
    kw = {"gn": dict(lr=0.5), "hig": dict(lr=1.0), "sip": dict(lr=1e-2, inverse=inv, y_step=0.5)}
    net_a, net_b, losses = _hand_loop(makers[method], method, **kw.get(method, dict(lr=1e-2)))
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb), method
    assert all(isinstance(v, float) for v in losses)


def test_hig_object_with_armijo_never_increases_the_batch_loss():
    # full batch: the safeguarded HIG step accepts only decreasing steps
    x = torch.linspace(-1, 1, 32, dtype=D).reshape(-1, 1)
    tgt = torch.cat([torch.sin(6 * x), torch.cos(9 * x)], 1)
    scale = torch.tensor([1.0, 0.01], dtype=D)
    net = nn.mlp([1, 7, 2], seed=0)
    opt = nn.HIG(net, lambda z: z * scale, lr=10.0)  # far too large a first trial step
    losses = [opt.step(x, tgt) for _ in range(15)]
    losses.append(nn.physics_loss(net, x, tgt, lambda z: z * scale).item())
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.98 * losses[0]
    # the pure step of the same size blows up
    net2 = nn.mlp([1, 7, 2], seed=0)
    pure = nn.HIG(net2, lambda z: z * scale, lr=10.0, line_search=None)
    for _ in range(3):
        pure.step(x, tgt)
    assert nn.physics_loss(net2, x, tgt, lambda z: z * scale).item() > losses[0]


def test_gn_object_is_hig_with_kappa_one():
    assert nn.GN(nn.mlp([1, 2, 1]), lambda z: z).kappa == 1.0
    assert nn.HIG(nn.mlp([1, 2, 1]), lambda z: z).kappa == 0.5
    assert nn.GN(nn.mlp([1, 2, 1]), lambda z: z).line_search is None


# ----------------------------------------------------------------------------- validation (issue 12)
def _tiny():
    return nn.mlp([1, 4, 1], seed=0), torch.zeros(4, 1, dtype=D)


@pytest.mark.parametrize("method", ["adam", "sgd", "gn", "hig"])
@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), float("inf")])
def test_train_rejects_non_positive_lr(method, lr):
    net, x = _tiny()
    with pytest.raises(ValueError, match="lr"):
        nn.train(net, x, x, lambda z: z, method, steps=2, lr=lr)


@pytest.mark.parametrize("bs", [0, -3, 1.5, True])
def test_train_rejects_bad_batch_size(bs):
    net, x = _tiny()
    with pytest.raises(ValueError, match="batch_size"):
        nn.train(net, x, x, lambda z: z, "adam", steps=2, batch_size=bs)


def test_train_checks_target_shape_against_physics():
    net, x = _tiny()
    with pytest.raises(ShapeError, match="per sample"):
        nn.train(net, x, torch.zeros(4, 3, dtype=D), lambda z: z, "adam", steps=1)


def test_train_rejects_nan_inputs_without_blaming_lr():
    net, x = _tiny()
    bad = x.clone()
    bad[1] = float("nan")
    with pytest.raises(NonFiniteError, match="inputs") as e:
        nn.train(net, bad, x, lambda z: z, "adam", steps=1)
    assert "lr" not in str(e.value)


def test_default_step_sizes_per_method():
    assert nn.DEFAULT_LR["gn"] == 1.0 and nn.DEFAULT_LR["hig"] == 1.0 and nn.DEFAULT_LR["adam"] == 1e-3
    net, x = _tiny()
    assert nn.make_step("hig", net, lambda z: z).line_search == "armijo"
    assert nn.make_step("gn", net, lambda z: z).lr == 1.0
    # at its default (η = 1), GN solves a linear least-squares fit of a linear model in one step
    lin = torch.nn.Linear(1, 1).double()
    t = torch.linspace(-1, 1, 8, dtype=D).reshape(-1, 1)
    res = nn.train(lin, t, 3 * t - 2, lambda z: z, "gn", steps=1)
    assert res.final_loss < 1e-20


def test_steps_zero_and_final_evaluation():
    net, x = _tiny()
    y = torch.ones(4, 1, dtype=D)
    res = nn.train(net, x, y, lambda z: z, "adam", steps=0, eval_data=(x, y), eval_every=5)
    L0 = nn.physics_loss(net, x, y, lambda z: z).item()
    assert res.losses == [] and res.final_loss == L0 and res.eval_losses == [L0]
    # an early stop (callback after step 2) still evaluates the final weights
    res = nn.train(net, x, y, lambda z: z, "adam", steps=50, lr=1e-2, eval_data=(x, y),
                   eval_every=10, callback=lambda k, r: k == 2)
    assert len(res.losses) == 3 and res.eval_steps == [0, 2]
    assert res.eval_losses[-1] == nn.physics_loss(net, x, y, lambda z: z).item() == res.final_loss


def test_error_mid_training_carries_partial_result():
    net, x = _tiny()
    calls = []

    def phys(z):
        calls.append(1)
        if len(calls) > 5:  # the shape check and four training steps go through
            raise RuntimeError("simulator crashed")
        return z

    with pytest.raises(RuntimeError, match="crashed") as e:
        nn.train(net, x, torch.ones(4, 1, dtype=D), phys, "adam", steps=10)
    part = e.value.result
    assert isinstance(part, nn.TrainResult) and len(part.losses) == 4
    assert "RuntimeError" in part.message
    # divergence: a NonFiniteError with the steps before it
    calls.clear()

    def blows_up(z):
        calls.append(1)
        return z * (float("inf") if len(calls) > 3 else 1.0)

    with pytest.raises(NonFiniteError, match="step 2") as e:
        nn.train(net, x, torch.ones(4, 1, dtype=D), blows_up, "sgd", steps=50)
    assert isinstance(e.value.result, nn.TrainResult) and len(e.value.result.losses) == 2


def test_train_rejects_model_and_inputs_of_different_precision():
    """A float32 model with float64 data gets a clear TypeError before any work (review row 56)."""
    model = torch.nn.Linear(2, 2)  # float32
    inputs = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32 but the inputs are torch.float64"):
        nn.train(model, inputs, inputs.clone(), lambda x: x, "adam", steps=1)


# ----------------------------------------------------------------------------- issue 22: the objects
def _frozen_net():
    net = nn.mlp([2, 5, 2], seed=0)
    net[0].weight.requires_grad_(False)
    net[0].bias.requires_grad_(False)
    return net


@pytest.mark.parametrize("make", [
    lambda net: nn.HIG(net, physics=lambda z: z, lr=1.0, line_search=None),
    lambda net: nn.GN(net, physics=lambda z: z),
    lambda net: nn.LM(net, physics=lambda z: z),
    lambda net: nn.DP(net, physics=lambda z: z, lr=1e-2),
    lambda net: nn.SIP(net, physics=lambda z: z, inverse=lambda y, x0: y, lr=1e-2),
])
def test_objects_leave_frozen_weights_alone(make):
    """Weights with requires_grad=False stay exactly as they were (library-2 C80: HIG moved them
    by 3.3), and the trainable ones move."""
    net = _frozen_net()
    x = torch.linspace(-1, 1, 16, dtype=D).reshape(8, 2)
    y = torch.sin(3 * x)
    w0, w1 = net[0].weight.clone(), net[2].weight.clone()
    opt = make(net)
    for _ in range(3):
        opt.step(x, y)
    assert torch.equal(net[0].weight, w0) and not torch.equal(net[2].weight, w1)


def test_stacked_jacobian_holds_frozen_weights_fixed():
    """The Jacobian has one column per trainable weight; equal to the loop reference and to the
    full Jacobian's trainable columns."""
    net = _frozen_net()
    inp = torch.randn(3, 2, dtype=D, generator=torch.Generator().manual_seed(1))
    J, _ = nn.stacked_jacobian(net, inp, _phys)
    for q in net[0].parameters():
        q.requires_grad_(True)
    J_all, _ = nn.stacked_jacobian(net, inp, _phys)
    k = net[0].weight.numel() + net[0].bias.numel()
    assert J.shape == (J_all.shape[0], J_all.shape[1] - k)
    assert torch.allclose(J, J_all[:, k:], atol=1e-13)


@pytest.mark.parametrize("cls", [nn.HIG, nn.GN, nn.DP])
def test_objects_check_their_data_as_train_does(cls):
    """library-2 C67/C68: a target shape or data dtype that does not fit gave a raw torch error
    (or, for a broadcastable shape, a silently wrong loss); now the same clear errors as train."""
    net = nn.mlp([2, 4, 2], seed=0)
    opt = cls(net, physics=lambda z: z)
    x = torch.zeros(8, 2, dtype=D)
    with pytest.raises(ShapeError, match="per sample"):
        opt.step(x, torch.zeros(8, 3, dtype=D))
    with pytest.raises(ShapeError, match="per sample"):
        opt.step(x, torch.zeros(8, 1, dtype=D))  # would broadcast silently in the loss
    if cls is not nn.DP:  # DP/SIP accept a model that converts its inputs itself
        with pytest.raises(TypeError, match="float64 but the inputs are torch.float32"):
            opt.step(x.float(), torch.zeros(8, 2))
    with pytest.raises(ShapeError, match="same batch size"):
        opt.step(x, torch.zeros(7, 2, dtype=D))


def test_per_sample_methods_reject_batch_norm():
    """library-2 C64: per-sample Jacobians and a BatchNorm layer in training mode gave a raw vmap
    error; now a ValueError naming the layer. In eval mode it runs."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).double()
    x = torch.randn(8, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    opt = nn.HIG(net, physics=lambda z: z)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        opt.step(x, x)
    net.eval()
    assert math.isfinite(opt.step(x, x))


def test_lm_step_solves_a_linear_least_squares_fit():
    """On a linear model the Marquardt-damped Gauss–Newton steps converge to the least-squares
    solution (numpy lstsq), with μ shrinking as steps succeed."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(20, 3, dtype=D, generator=g)
    b = torch.randn(20, 1, dtype=D, generator=g)
    lin = torch.nn.Linear(3, 1, bias=False).double()
    opt = nn.LM(lin, physics=lambda z: z, damping=1.0)
    for _ in range(40):
        opt.step(A, b)
    ref = np.linalg.lstsq(A.numpy(), b.numpy(), rcond=None)[0].ravel()
    assert np.allclose(lin.weight.detach().numpy().ravel(), ref, atol=1e-8)
    assert opt.damping < 1.0  # successful steps shrank μ, the converged ones did not blow it up
