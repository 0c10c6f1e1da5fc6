"""Adaptive Levenberg-Marquardt (``ig`` with ``damping="auto"``) on the 27 certified nonlinear
least-squares problems of NIST's Statistical Reference Datasets, from both certified starts,
against MINPACK's LM (``scipy.optimize.least_squares(method="lm")``) from the same starts.

Data: NIST/ITL StRD, https://www.itl.nist.gov/div898/strd/nls/nls_main.shtml (the .dat files as
published, converted to ``tests/data/nist_strd.json`` by ``tools/nist_strd_to_json.py``). Each model
below is typed in from the model line of its .dat file.

"Solved" means: every parameter agrees with its certified value to a relative 1e-6.
"""

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

import physgrad
from physgrad import updates

D = torch.float64
DATA = json.loads((Path(__file__).parent / "data" / "nist_strd.json").read_text())
PROBLEMS = DATA["problems"]
RTOL = 1e-6  # relative agreement of every parameter with its certified value
t = torch


def _cubic_ratio(b, x):
    return (b[0] + b[1] * x + b[2] * x ** 2 + b[3] * x ** 3) / (1 + b[4] * x + b[5] * x ** 2 + b[6] * x ** 3)


def _gauss(b, x):
    return (b[0] * t.exp(-b[1] * x) + b[2] * t.exp(-(x - b[3]) ** 2 / b[4] ** 2)
            + b[5] * t.exp(-(x - b[6]) ** 2 / b[7] ** 2))


def _lanczos(b, x):
    return b[0] * t.exp(-b[1] * x) + b[2] * t.exp(-b[3] * x) + b[4] * t.exp(-b[5] * x)


def _saturation(b, x):
    return b[0] * (1 - t.exp(-b[1] * x))


def _chwirut(b, x):
    return t.exp(-b[0] * x) / (b[1] + b[2] * x)


def _enso(b, x):
    w = 2 * math.pi * x
    return (b[0] + b[1] * t.cos(w / 12) + b[2] * t.sin(w / 12) + b[4] * t.cos(w / b[3]) + b[5] * t.sin(w / b[3])
            + b[7] * t.cos(w / b[6]) + b[8] * t.sin(w / b[6]))


#: name -> model y(b, x), from the "y = ..." line of each .dat file (Nelson fits log y)
MODELS = {
    "Misra1a": _saturation,
    "Chwirut2": _chwirut,
    "Chwirut1": _chwirut,
    "Lanczos3": _lanczos,
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "DanWood": lambda b, x: b[0] * x ** b[1],
    "Misra1b": lambda b, x: b[0] * (1 - (1 + b[1] * x / 2) ** (-2)),
    "Kirby2": lambda b, x: (b[0] + b[1] * x + b[2] * x ** 2) / (1 + b[3] * x + b[4] * x ** 2),
    "Hahn1": _cubic_ratio,
    "Nelson": lambda b, x: b[0] - b[1] * x[0] * t.exp(-b[2] * x[1]),
    "MGH17": lambda b, x: b[0] + b[1] * t.exp(-x * b[3]) + b[2] * t.exp(-x * b[4]),
    "Lanczos1": _lanczos,
    "Lanczos2": _lanczos,
    "Gauss3": _gauss,
    "Misra1c": lambda b, x: b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5)),
    "Misra1d": lambda b, x: b[0] * b[1] * x / (1 + b[1] * x),
    "Roszman1": lambda b, x: b[0] - b[1] * x - t.atan(b[2] / (x - b[3])) / math.pi,
    "ENSO": _enso,
    "MGH09": lambda b, x: b[0] * (x ** 2 + x * b[1]) / (x ** 2 + x * b[2] + b[3]),
    "Thurber": _cubic_ratio,
    "BoxBOD": _saturation,
    "Rat42": lambda b, x: b[0] / (1 + t.exp(b[1] - b[2] * x)),
    "MGH10": lambda b, x: b[0] * t.exp(b[1] / (x + b[2])),
    "Eckerle4": lambda b, x: (b[0] / b[1]) * t.exp(-0.5 * ((x - b[2]) / b[1]) ** 2),
    "Rat43": lambda b, x: b[0] / (1 + t.exp(b[1] - b[2] * x)) ** (1 / b[3]),
    "Bennett5": lambda b, x: b[0] * (b[1] + x) ** (-1 / b[2]),
}
FITS = [(name, start) for name in MODELS for start in (1, 2)]


def problem(name):
    """(model on torch tensors, x, y) of one certified problem; Nelson's response is log y."""
    p = PROBLEMS[name]
    x, y = torch.tensor(p["x"], dtype=D), torch.tensor(p["y"], dtype=D)
    if name == "Nelson":
        y = torch.log(y)
    model = MODELS[name]
    return (lambda b: model(b, x)), y


def solved(b, name):
    cert = np.array(PROBLEMS[name]["certified"])
    b = np.asarray(b, dtype=float)
    return bool(np.all(np.isfinite(b)) and np.all(np.abs(b - cert) <= RTOL * np.abs(cert)))


@lru_cache(maxsize=None)
def minpack(name, start):
    """MINPACK's LM (lmder through scipy) from the certified start, with the autograd Jacobian."""
    f, y = problem(name)
    b0 = np.array(PROBLEMS[name][f"start{start}"])
    fun = lambda b: (f(torch.from_numpy(b)) - y).numpy()  # noqa: E731
    jac = lambda b: torch.func.jacfwd(f)(torch.from_numpy(b)).numpy()  # noqa: E731
    with np.errstate(all="ignore"):
        ref = least_squares(fun, b0, jac=jac, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=5000)
    return ref.x


@lru_cache(maxsize=None)
def ours(name, start):
    f, y = problem(name)
    b0 = torch.tensor(PROBLEMS[name][f"start{start}"], dtype=D)
    res = physgrad.optimize(physgrad.Problem(f, y), b0, "ig", steps=5000, damping="auto", xtol=1e-15,
                            on_nonfinite="stop", progress=False)
    return res.x.numpy(), res


def test_the_data_match_their_certificates():
    # the typed-in models and the data reproduce the certified residual sums of squares (to the
    # digits NIST gives for the certified parameters)
    assert len(FITS) == 54 and set(MODELS) == set(PROBLEMS)
    for name in MODELS:
        f, y = problem(name)
        rss = float(((f(torch.tensor(PROBLEMS[name]["certified"], dtype=D)) - y) ** 2).sum())
        assert rss == pytest.approx(PROBLEMS[name]["rss"], rel=1e-6, abs=1e-20), name


@pytest.mark.parametrize("name,start", FITS, ids=[f"{n}-start{s}" for n, s in FITS])
def test_lm_solves_every_fit_minpack_solves(name, start):
    ref = minpack(name, start)
    b, res = ours(name, start)
    if solved(ref, name):
        assert solved(b, name), (name, start, b, PROBLEMS[name]["certified"], res.message)
        np.testing.assert_allclose(b, ref, rtol=1e-7)  # where both solve, they agree
    else:
        assert not solved(ref, name)
