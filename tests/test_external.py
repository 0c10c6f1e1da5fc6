"""User-supplied derivatives (physgrad.external, Problem(..., vjp=, jvp=, jacobian=)): checked
against autograd on the book's problems and against finite differences; a numpy heat simulator
with a numpy adjoint converges with lbfgs and matrix-free ig without autograd ever seeing it."""

import numpy as np
import pytest
import torch

import physgrad
from physgrad.external import Simulator, numpy_simulator
from physgrad.problem import DerivativeCheckError
from physgrad.problems.burgers import burgers_1d
from physgrad.problems.heat import heat_1d
from physgrad.problems.toy import rosenbrock, toy_x0

D = torch.float64


def numpy_heat(prob, log):
    """heat_1d written in numpy: forward, adjoint (vjp) and tangent (jvp) by hand; every call
    is logged with the type of what the simulator received."""
    d = prob.decay.numpy()
    n = prob.target.shape[-1]

    def blur(a):  # the heat flow is symmetric: P = Pᵀ, and linear: J v = P v
        return np.fft.irfft(np.fft.rfft(a) * d, n=n)

    def forward(x):
        log.append(("forward", type(x)))
        return blur(x)

    def vjp(x, u):
        log.append(("vjp", type(u)))
        return blur(u)

    def jvp(x, v):
        log.append(("jvp", type(v)))
        return blur(v)

    return numpy_simulator(forward, vjp=vjp, jvp=jvp, name="numpy heat")


@pytest.mark.parametrize("method,options", [("lbfgs", {}), ("ig", {"solver": "lsqr"})])
def test_numpy_heat_with_numpy_adjoint_converges(method, options, monkeypatch):
    # the "Done means": lbfgs and matrix-free ig on the book's heat problem
    from physgrad import external

    def no_autograd(*args):
        raise AssertionError("autograd ran a backward through the simulator")

    monkeypatch.setattr(external._Forward, "backward", staticmethod(no_autograd))
    ref = heat_1d(n=64)
    log = []
    prob = physgrad.Problem(numpy_heat(ref, log), ref.target)
    res = physgrad.optimize(prob, ref.x0, method, steps=300, tol=1e-6, **options)
    torch_res = physgrad.optimize(ref, ref.x0, method, steps=300, tol=1e-6, **options)
    assert res.converged and res.success and res.fun <= 1e-6 * res.losses[0].item()
    # the same run as the torch simulator's (round-off differs: numpy's FFT is not torch's, and the
    # badly conditioned modes of heat amplify it in x, not in the loss)
    assert res.nit == torch_res.nit
    assert torch.allclose(res.losses, torch_res.losses, rtol=1e-6)
    assert torch.allclose(res.x, torch_res.x, atol=1e-3)
    kinds = {k for k, _ in log}
    assert "forward" in kinds and "vjp" in kinds and (method == "lbfgs" or "jvp" in kinds)
    # the simulator only ever saw numpy arrays, never tensors that autograd could record, and no
    # backward pass ran through it (monkeypatched above): the derivatives are the user's functions
    assert all(t is np.ndarray for _, t in log)


def _autograd_derivatives(prob):
    """vjp / jvp / jacobian written with torch.func, handed over as 'user' functions."""
    f = prob.forward

    def vjp(x, u):
        return torch.func.vjp(f, x)[1](u)[0]

    def jvp(x, v):
        return torch.func.jvp(f, (x,), (v,))[1]

    def jac(x):
        return torch.func.jacrev(lambda z: f(z.reshape(x.shape)).reshape(-1))(x.reshape(-1))

    return vjp, jvp, jac


@pytest.mark.parametrize("make", [lambda: rosenbrock(), lambda: heat_1d(n=16, nu_T=1.0),
                                  lambda: burgers_1d(n=16, steps=5)])
@pytest.mark.parametrize("given", ["vjp", "jvp", "jacobian", "vjp+jvp"])
def test_problem_derivatives_from_user_functions_match_autograd(make, given):
    ref = make()
    vjp, jvp, jac = _autograd_derivatives(ref)
    kw = {k: f for k, f in (("vjp", vjp), ("jvp", jvp), ("jacobian", jac)) if k in given.split("+")}
    prob = physgrad.Problem(ref.forward, ref.target, **kw)
    g = torch.Generator().manual_seed(0)
    x = (ref.x0 if hasattr(ref, "x0") else toy_x0()) + 0.3 * torch.randn(ref.x0.shape if hasattr(ref, "x0") else (2,),
                                                                         generator=g, dtype=D)
    J = ref.jacobian(x)
    assert torch.allclose(prob.jacobian(x), J, atol=1e-12)
    u = torch.randn(ref.target.shape, generator=g, dtype=D)
    v = torch.randn(x.shape, generator=g, dtype=D)
    if given != "jvp":
        assert torch.allclose(prob.vjp(x, u), ref.vjp(x, u), atol=1e-12)
        L, gr = prob.value_and_grad(x)
        L0, gr0 = ref.value_and_grad(x)
        assert torch.allclose(L, L0) and torch.allclose(gr, gr0, atol=1e-12)
        # loss.backward() works through the Simulator (its backward is the user's vjp)
        xr = x.clone().requires_grad_(True)
        prob.loss(xr).backward()
        assert torch.allclose(xr.grad, gr0, atol=1e-12)
    if given != "vjp":
        assert torch.allclose(prob.jvp(x, v), ref.jvp(x, v), atol=1e-12)


def test_dense_methods_assemble_the_jacobian_and_runs_match_autograd():
    ref = rosenbrock()
    vjp, jvp, _ = _autograd_derivatives(ref)
    x0 = torch.tensor([-1.2, 1.0], dtype=D)
    for method, kw, opts in [("lbfgs", {"vjp": vjp}, {}), ("bfgs", {"vjp": vjp}, {}),
                             ("gd", {"vjp": vjp}, {"step_size": 1e-3}), ("adam", {"vjp": vjp}, {"step_size": 1e-2}),
                             ("ig", {"jvp": jvp}, {}), ("ig", {"vjp": vjp}, {"damping": "auto"}),
                             ("hig", {"vjp": vjp, "jvp": jvp}, {})]:
        prob = physgrad.Problem(ref.forward, ref.target, **kw)
        a = physgrad.optimize(prob, x0, method, steps=30, **opts)
        b = physgrad.optimize(ref, x0, method, steps=30, **opts)
        assert a.nit == b.nit and torch.allclose(a.losses, b.losses, rtol=1e-9, atol=1e-14), method


def test_numpy_simulator_against_finite_differences_and_dtype():
    # a non-linear numpy model: y = A tanh(x) + x^2 with a hand-written adjoint and tangent
    rng = np.random.default_rng(1)
    A = rng.normal(size=(5, 3))

    def f(x):
        return A @ np.tanh(x) + np.concatenate([x ** 2, [0.0, 0.0]])

    def vjp(x, u):
        return (A.T @ u) * (1 - np.tanh(x) ** 2) + 2 * x * u[:3]

    def jvp(x, v):
        return A @ ((1 - np.tanh(x) ** 2) * v) + np.concatenate([2 * x * v, [0.0, 0.0]])

    sim = numpy_simulator(f, vjp=vjp, jvp=jvp)
    x = torch.tensor([0.3, -0.7, 1.1], dtype=D)
    prob = physgrad.Problem(sim, torch.zeros(5, dtype=D))
    prob.check_entrance(x, "ig", check_derivatives=True)  # passes: FD and adjoint tests
    # the Jacobian from jvp columns equals a central difference column by column
    h = 1e-6
    fd = torch.stack([(prob.forward(x + h * e) - prob.forward(x - h * e)) / (2 * h) for e in torch.eye(3, dtype=D)], 1)
    assert torch.allclose(prob.jacobian(x), fd, atol=1e-8)
    # dtype and device follow the input: a float32 run gets float32 tensors back
    y32 = sim(x.float())
    assert y32.dtype == torch.float32 and torch.allclose(y32.double(), prob.forward(x), atol=1e-6)
    # a wrong adjoint is caught by check_derivatives
    bad = physgrad.Problem(numpy_simulator(f, vjp=lambda x, u: 2 * vjp(x, u), jvp=jvp), torch.zeros(5, dtype=D))
    with pytest.raises(DerivativeCheckError, match="adjoint"):
        physgrad.optimize(bad, x, "lbfgs", steps=1, check_derivatives=True)
    wrong_jvp = physgrad.Problem(numpy_simulator(f, jvp=lambda x, v: jvp(x, v) + 0.1), torch.zeros(5, dtype=D))
    with pytest.raises(DerivativeCheckError, match="finite difference"):
        physgrad.optimize(wrong_jvp, x, "ig", steps=1, check_derivatives=True)


def test_torch_func_vjp_through_a_simulator():
    sim = numpy_simulator(lambda x: 3 * x ** 2, vjp=lambda x, u: 6 * x * u, jvp=lambda x, v: 6 * x * v)
    x = torch.tensor([1.0, 2.0], dtype=D)
    _, pull = torch.func.vjp(sim, x)
    assert torch.equal(pull(torch.ones(2, dtype=D))[0], torch.tensor([6.0, 12.0], dtype=D))


def test_what_user_derivatives_cannot_do_is_refused_up_front():
    ref = rosenbrock()
    vjp, jvp, _ = _autograd_derivatives(ref)
    x0 = torch.tensor([-1.2, 1.0], dtype=D)
    only_jvp = physgrad.Problem(ref.forward, ref.target, jvp=jvp)
    only_vjp = physgrad.Problem(ref.forward, ref.target, vjp=vjp)
    with pytest.raises(TypeError, match="second derivatives"):
        physgrad.optimize(only_vjp, x0, "newton")
    with pytest.raises(TypeError, match="vjp"):
        physgrad.optimize(only_jvp, x0, "lbfgs")
    with pytest.raises(TypeError, match="jvp"):
        physgrad.optimize(only_vjp, x0, "ig", solver="lsqr")
    with pytest.raises(TypeError, match="batched problem takes user derivatives as vjp= and/or jvp="):
        physgrad.Problem(ref.forward, ref.target.expand(2, 2), jacobian=lambda x: torch.eye(2, dtype=D), batched=True)
    with pytest.raises(TypeError, match="not both"):
        physgrad.Problem(Simulator(ref.forward, vjp=vjp), ref.target, jvp=jvp)
    with pytest.raises(TypeError, match="at least one derivative"):
        Simulator(ref.forward)


def test_scaled_problem_keeps_user_derivatives():
    ref = rosenbrock()
    vjp, jvp, _ = _autograd_derivatives(ref)
    prob = physgrad.Problem(ref.forward, ref.target, vjp=vjp, jvp=jvp).scaled(10.0)
    x = torch.tensor([0.5, 0.2], dtype=D)
    assert prob.simulator is not None
    assert torch.allclose(prob.jacobian(x), ref.scaled(10.0).jacobian(x))
    assert torch.allclose(prob.grad(x), ref.scaled(10.0).grad(x))
