"""One parametrized test over the bad- and edge-input table of the library review
(shared/reviews/library.md, problem 4; nn cases belong to tests/test_nn.py): each case gets
the documented error or behaviour. Base problem: P(x) = A x + 0.1 x³, n = 3, float64."""

import pytest
import torch

import physgrad
from physgrad import errors, updates

D = torch.float64
A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 3.0, 0.2], [0.0, 0.2, 1.5]], dtype=D)


def P(x):
    return A.to(x.dtype) @ x + 0.1 * x ** 3


Y = P(torch.tensor([1.0, -1.0, 0.5], dtype=D))


def prob(**kw):
    return physgrad.Problem(kw.pop("forward", P), kw.pop("target", Y), **kw)


def x0(dtype=D):
    return torch.zeros(3, dtype=dtype)


def run(method="ig", x=None, p=None, **kw):
    kw.setdefault("steps", 2)
    return physgrad.optimize(p or prob(), x0() if x is None else x, method, **kw)


def raises(exc, match):
    def check(fn):
        with pytest.raises(exc, match=match):
            fn()
    return check


def ok(pred):
    def check(fn):
        assert pred(fn())
    return check


CASES = {
    "1 target shape": (lambda: run(p=prob(target=torch.zeros(4, dtype=D))), raises(errors.ShapeError, "shape")),
    "2 NaN in x0": (lambda: run(x=torch.tensor([float("nan"), 0, 0], dtype=D)), raises(errors.NonFiniteError, "x0")),
    "4 int64 x0": (lambda: run(x=torch.zeros(3, dtype=torch.int64)), raises(TypeError, "floating-point")),
    "8 float16 gd": (lambda: run("gd", x=x0(torch.float16), step_size=0.01), ok(lambda r: r.x.dtype == torch.float16)),
    "8b float16 ig": (lambda: run(x=x0(torch.float16)), raises(TypeError, "float32")),
    "9 bfloat16 newton": (lambda: run("newton", x=x0(torch.bfloat16)), raises(TypeError, "float32")),
    "10 complex gd": (lambda: run("gd", x=x0(torch.complex128), step_size=0.05, steps=50,
                                  p=prob(target=Y.to(torch.complex128))), ok(lambda r: r.status == 1 and r.fun < r.losses[0].item())),
    "10b complex ig": (lambda: run(x=x0(torch.complex128), p=prob(target=Y.to(torch.complex128))),
                       raises(TypeError, "complex")),
    "10d complex bfgs": (lambda: run("bfgs", x=x0(torch.complex128), p=prob(target=Y.to(torch.complex128))),
                         raises(TypeError, "complex")),
    "11 forward returns float": (lambda: run(p=prob(forward=lambda x: 1.0)), raises(TypeError, "torch.Tensor")),
    "13b forward raises mid-run": (lambda: run("gd", step_size=0.01, steps=5, p=prob(forward=_fails_at(3))),
                                   raises(KeyError, "boom")),
    "14c divergence keeps result": (lambda: run(p=prob(forward=torch.sqrt, target=torch.full((3,), 0.01, dtype=D)),
                                                x=torch.ones(3, dtype=D), steps=5),
                                    raises(errors.NonFiniteError, "diverged")),
    "15 steps=0": (lambda: run(steps=0), ok(lambda r: r.nit == 0)),
    "15b steps float": (lambda: run(steps=10.0), raises(ValueError, "non-negative int")),
    "15c steps=True": (lambda: run(steps=True), raises(ValueError, "non-negative int")),
    "16 step_size negative": (lambda: run("gd", step_size=-0.1), raises(ValueError, "positive")),
    "16c step_size str": (lambda: run("gd", step_size="0.1"), raises(TypeError, "number")),
    "17 unknown method": (lambda: run("levenberg"), raises(ValueError, "unknown method")),
    "18 misspelled option": (lambda: run(dampnig=0.1), raises(TypeError, "dampnig")),
    "18d lbfgs option for bfgs": (lambda: run("bfgs", history=3), raises(TypeError, "history")),
    "18f negative tol": (lambda: run(tol=-1), raises(ValueError, "tol")),
    "18i hig truncation<0": (lambda: run("hig", truncation=-1), raises(ValueError, "truncation")),
    "19 pg without inverse": (lambda: run("pg"), raises(errors.MissingInverseError, "numerical_inverse")),
    "22d inverse dtype": (lambda: run("pg", p=prob(inverse=lambda y, x: x.float())),
                          raises(errors.InverseSimulatorError, "dtype")),
    "22e inverse no progress": (lambda: run("pg", p=prob(inverse=lambda y, x: x.clone())),
                                ok(lambda r: r.status == -2 and "stalled" in r.message)),
    "24 forward float32 for float64 x": (lambda: run(p=prob(forward=lambda x: P(x).float())),
                                         raises(TypeError, "dtype")),
    "24b same, newton": (lambda: run("newton", p=prob(forward=lambda x: P(x).float())), raises(TypeError, "dtype")),
    "25 meta x0": (lambda: run(x=torch.zeros(3, dtype=D, device="meta")), raises(TypeError, "meta")),
    "26 non-contiguous x0": (lambda: run(x=torch.zeros(3, 2, dtype=D)[:, 0]), ok(lambda r: r.nit == 2)),
    "28 NaN in target": (lambda: prob(target=torch.tensor([float("nan"), 0, 0])), raises(errors.NonFiniteError, "target")),
    "35 newton at a maximum": (lambda: run("newton", p=prob(forward=lambda x: x * x, target=torch.ones(3, dtype=D))),
                               ok(lambda r: r.status == -2 and not r.success)),
    "35c newton indefinite": (lambda: run("newton", steps=5, x=torch.tensor([0.1, 0.1], dtype=D),
                                          p=prob(forward=lambda x: torch.stack([x[0] ** 2 - x[1] ** 2, x[0] * x[1]]),
                                                 target=torch.tensor([1.0, 0.5], dtype=D))),
                              ok(lambda r: r.fun < r.losses[0].item() and "not positive definite" in r.message)),
    "37 Problem(P, None)": (lambda: physgrad.Problem(P, None), raises(TypeError, "target")),
    "42 LM at the solution": (lambda: run(x=torch.tensor([1.0, -1.0, 0.5], dtype=D), damping="auto"),
                              ok(lambda r: r.converged and r.success)),
    "44 hig kappa=0 grows": (lambda: run("hig", kappa=0.0, steps=5, line_search=None),
                             ok(lambda r: r.status == -3 or r.fun <= r.losses[0].item())),
    "state wrong kind": (lambda: run("bfgs", state=updates.LMState()), raises(TypeError, "BFGSState")),
}


def _fails_at(n):
    calls = {"k": 0}

    def f(x):
        calls["k"] += 1
        if calls["k"] == n:
            raise KeyError("boom")
        return P(x)
    return f


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_table(case):
    fn, check = CASES[case]
    check(fn)


def test_mid_run_errors_carry_the_partial_result():
    for fn in (CASES["13b forward raises mid-run"][0], CASES["14c divergence keeps result"][0]):
        with pytest.raises(Exception) as ei:
            fn()
        assert isinstance(ei.value.result, physgrad.Result) and not ei.value.result.success
