"""Chapter 8: the SIP descent counterexample and coding exercises 4 and 5 (reference solutions of
notebooks/08g-from-scratch.ipynb, recomputed with physgrad.nn)."""

import pytest
import torch

from physgrad import nn
from physgrad.experiments import multimodality, two_outputs

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def test_sip_counterexample_descent_step_raises_the_loss():
    J = torch.tensor([[1.0, 10.0], [0.0, 1.0]], dtype=D)
    Theta = torch.diag(torch.tensor([1.0, 2.0], dtype=D))
    r = torch.tensor([1.0, -1.0], dtype=D)  # r = y - y*
    g, d = J.T @ r, -torch.linalg.solve(J, r)
    assert (g @ d).item() == pytest.approx(-2.0) and (d @ Theta @ d).item() == pytest.approx(123.0)
    assert (g @ Theta @ d).item() == pytest.approx(7.0)
    # the same number as the quadratic form of the non-symmetric J Theta J^-1
    assert (-(r @ J @ Theta @ torch.linalg.inv(J) @ r)).item() == pytest.approx(7.0)
    # and in the loss itself: a small step along Theta d raises it at the first-order rate
    y_star = -r
    L = lambda x: 0.5 * (J @ x - y_star).pow(2).sum().item()
    eta = 1e-4
    assert (L(eta * Theta @ d) - L(torch.zeros(2, dtype=D))) / eta == pytest.approx(7.0, rel=1e-3)


def test_exercise4_kappa_sweep_half_beats_both_ends():
    t = torch.linspace(-1, 1, 128, dtype=D).reshape(-1, 1)
    target = torch.cat([torch.sin(6 * t), torch.cos(9 * t)], 1)
    final = {}
    for kappa in (-1.0, 0.5, 1.0):
        net = nn.mlp([1, 7, 2], seed=0)
        final[kappa] = nn.train(net, t, target, two_outputs.physics_for(0.01), "hig", steps=200,
                                lr=1.0, kappa=kappa).final_loss
    assert final[-1.0] > 10 * final[0.5] and final[1.0] > 10 * final[0.5], final


def test_exercise5_wrong_branch_inverse_collapses_to_zero():
    y = torch.linspace(0.05, 1.0, 128, dtype=D).reshape(-1, 1)
    out = {}
    for name, inv in (("keep", multimodality.square_inverse),
                      ("wrong", lambda yq, x0: -multimodality.square_inverse(yq, x0))):
        net = nn.mlp([1, 16, 16, 1], seed=0)
        res = nn.train(net, y, y, multimodality.square, "sip", steps=500, lr=1e-2, inverse=inv)
        with torch.no_grad():
            out[name] = (res.final_loss, net(y).abs().mean().item())
    assert out["wrong"][0] > 1000 * out["keep"][0]
    assert out["wrong"][1] < 0.05
    assert out["wrong"][0] == pytest.approx(0.5 * y.pow(2).mean().item(), rel=0.05)
