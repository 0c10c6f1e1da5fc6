"""The entrance check of physgrad.optimize (Problem.check_entrance) and the silent-wrong inputs of
shared/reviews/library-2.md that are caught at the Problem or the entrance (C14, C27, C28, C29,
C30, C47, C75). Each case below gave a silent wrong result or a raw torch error before."""

import numpy as np
import pytest
import torch

import physgrad
from physgrad.problem import DerivativeCheckError

D = torch.float64
A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 3.0, 0.2], [0.0, 0.2, 1.5]], dtype=D)


def P(x):
    return A.to(x.dtype) @ x + 0.1 * x ** 3


Y = P(torch.tensor([1.0, -1.0, 0.5], dtype=D))
X0 = torch.zeros(3, dtype=D)


def forward_steps(forward, method="gd", **kw):
    """Run optimize and record the forward calls made by steps (after the entrance)."""
    kw.setdefault("step_size", 0.01) if method in ("gd", "adam") else None
    return physgrad.optimize(physgrad.Problem(forward, Y), X0 + 0.5, method, steps=3, **kw)


@pytest.mark.parametrize("method", ["gd", "lbfgs", "ig", "newton", "hig"])
def test_item_in_the_forward_is_rejected_before_step_1_and_named(method):
    steps = []

    def forward(x):
        return torch.stack([x[0].item() * x[0], x[1] ** 2, x[2]])  # .item() cuts d/dx0 of the product

    with pytest.raises(TypeError, match=r"\.item\(\)") as ei:
        physgrad.optimize(physgrad.Problem(forward, Y), X0 + 0.5, method, steps=3,
                          callback=lambda k, x, L: steps.append(k),
                          **({"step_size": 0.01} if method == "gd" else {}))
    assert steps == [] and not hasattr(ei.value, "result")  # before step 1


@pytest.mark.parametrize("cut,name", [
    (lambda x: torch.tensor([v * v for v in x.tolist()], dtype=x.dtype), ".tolist()"),
    (lambda x: torch.as_tensor(np.sin(x.detach().numpy())), ".detach()"),
    (lambda x: (A @ x).detach() + 0 * x.detach(), ".detach()"),
    (lambda x: torch.stack([torch.tensor(float(x[0]) ** 2, dtype=x.dtype), x[1], x[2]]), "float()"),
    (lambda x: A @ (10 * x).long().to(x.dtype) / 10, ".long()"),
    (lambda x: A @ x.data, ".data"),
])
def test_each_graph_cut_is_named(cut, name):
    with pytest.raises(TypeError, match="P\\(x\\)") as ei:
        physgrad.optimize(physgrad.Problem(cut, Y), X0 + 0.5, "lbfgs", steps=2)
    assert name in str(ei.value)


def test_no_grad_forward_is_rejected_with_the_cause():
    # C30: ig "worked" (forward mode ignores no_grad) while gd would stall; now every method says why
    def forward(x):
        with torch.no_grad():
            return P(x)

    for method in ("ig", "gd"):
        with pytest.raises(TypeError, match="no_grad"):
            physgrad.optimize(physgrad.Problem(forward, Y), X0, method, steps=2, step_size=0.1)


def test_harmless_item_for_control_flow_passes_and_costs_no_extra_forward():
    calls = []

    def forward(x):  # .item() decides a branch, but the value never enters the output
        calls.append(1)
        return P(x) if x.abs().max().item() < 1e6 else 2 * P(x)

    res = physgrad.optimize(physgrad.Problem(forward, Y), X0, "ig", steps=3)
    plain = physgrad.optimize(physgrad.Problem(P, Y), X0, "ig", steps=3)
    assert torch.allclose(res.x, plain.x)
    # the checked trial evaluation is the run's P(x0) (plus two finite-difference calls)
    assert res.counts["forward"] == plain.counts["forward"]


def test_a_clean_forward_costs_no_extra_call():
    calls = []

    def forward(x):
        calls.append(1)
        return P(x)

    res = physgrad.optimize(physgrad.Problem(forward, Y), X0, "lbfgs", steps=5)
    assert len(calls) == res.counts["forward"]


def test_inplace_forward_is_rejected():
    # C27 (x.mul_ doubled the iterate at every forward), C28 (x[0] = 0: raw leaf-variable error)
    def doubling(x):
        x.mul_(2)
        return P(x)

    def zeroing(x):
        x[0] = 0
        return P(x)

    for f, method in ((doubling, "ig"), (zeroing, "lbfgs"), (doubling, "pg")):
        prob = physgrad.Problem(f, Y, inverse=lambda y, x0: x0)
        with pytest.raises(ValueError, match="writes into its argument"):
            physgrad.optimize(prob, X0 + 0.5, method, steps=2)


def test_callback_gets_a_copy():
    # C47: a callback that zeroes its x used to zero the returned iterate
    def vandal(k, x, L):
        x.zero_()

    res = physgrad.optimize(physgrad.Problem(P, Y), X0, "ig", steps=3, callback=vandal)
    assert torch.equal(res.x, res.xs[-1]) and res.x.abs().sum() > 0
    assert res.fun == pytest.approx(float(physgrad.Problem(P, Y).loss(res.x)))


def test_complex_target_with_real_forward_is_refused():
    # C75: the imaginary part was silently dropped and the run "converged"
    target = Y.to(torch.complex128) + 1j
    with pytest.raises(TypeError, match="imaginary part"):
        physgrad.optimize(physgrad.Problem(P, target), X0, "ig", steps=3)


def test_target_with_a_graph_is_detached():
    # C14: ig/newton results carried a graph back to the target's parameters, gd's did not
    w = torch.tensor(2.0, dtype=D, requires_grad=True)
    prob = physgrad.Problem(P, Y * w)
    assert not prob.target.requires_grad
    for method in ("ig", "newton", "gd"):
        res = physgrad.optimize(prob, X0, method, steps=3, step_size=0.01 if method == "gd" else None)
        assert res.x.grad_fn is None and not res.x.requires_grad


def test_random_forward_gets_a_hint():
    # C29: raw "vmap: called random operation while in randomness error mode"
    def noisy(x):
        return P(x) + 1e-9 * torch.randn(3, dtype=x.dtype)

    with pytest.raises(RuntimeError, match='jacobian_mode="autograd"'):
        physgrad.optimize(physgrad.Problem(noisy, Y), X0, "ig", steps=2)
    torch.manual_seed(0)
    ok = physgrad.optimize(physgrad.Problem(noisy, Y, jacobian_mode="autograd"), X0, "ig", steps=5)
    assert ok.fun < 1e-10


def test_check_derivatives_finds_a_wrong_custom_autograd_function():
    class WrongSquare(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x ** 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x * g  # should be 2 x g

    prob = physgrad.Problem(lambda x: WrongSquare.apply(x), Y)
    physgrad.optimize(prob, X0 + 1, "lbfgs", steps=1)  # not checked by default
    with pytest.raises(DerivativeCheckError, match="finite difference"):
        physgrad.optimize(prob, X0 + 1, "lbfgs", steps=1, check_derivatives=True)
    physgrad.optimize(physgrad.Problem(P, Y), X0 + 1, "lbfgs", steps=1, check_derivatives=True)  # correct: passes


def test_a_replaced_forward_is_checked_again():
    # the entrance check runs once per shape/dtype/device of x; a new forward voids that
    prob = physgrad.Problem(P, Y)
    physgrad.optimize(prob, X0 + 0.5, "gd", steps=2, step_size=0.01)
    prob.forward = lambda x: torch.tensor([float(v) for v in P(x)], dtype=x.dtype)
    with pytest.raises(TypeError, match=r"float\(\)"):
        physgrad.optimize(prob, X0 + 0.5, "gd", steps=2, step_size=0.01)
    prob.forward = P  # a good forward again: the runs work
    assert physgrad.optimize(prob, X0 + 0.5, "gd", steps=2, step_size=0.01).nit == 2


def test_a_new_shape_or_dtype_is_checked_again():
    def forward(x):  # cuts the graph only for float32 (a dtype-dependent code path)
        return P(x) if x.dtype == D else P(x).detach()

    prob = physgrad.Problem(forward, Y)
    assert physgrad.optimize(prob, X0 + 0.5, "gd", steps=2, step_size=0.01).nit == 2
    with pytest.raises(TypeError, match="detach"):
        physgrad.optimize(prob, (X0 + 0.5).float(), "gd", steps=2, step_size=0.01)
    stacked = physgrad.Problem(lambda x: P(x[0]) if x.shape[0] == 1 else P(x[0]).detach(), Y)
    assert physgrad.optimize(stacked, (X0 + 0.5)[None], "gd", steps=2, step_size=0.01).nit == 2
    with pytest.raises(TypeError, match="detach"):
        physgrad.optimize(stacked, (X0 + 0.5).expand(2, 3).clone(), "gd", steps=2, step_size=0.01)
