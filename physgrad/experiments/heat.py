r"""Experiment 4 of chapter 8: a network reconstructs diffused temperatures (SIP paper).

The recipe of Holl, Koltun and Thuerey (2022), re-implemented from the description in their
public code (``tum-pbs/SIP``, ``heat/inv_diffuse.py`` and ``heat/train_heat.py``):

* data (:func:`paper_boxes`): on a periodic 64×64 grid with unit spacing, 4 to 10 boxes with
  centres in the middle 80 % of the domain, half-sizes uniform in [0, 10) cells per axis,
  strengths uniform in [0, 1) (so every field is ≥ 0), soft edges about one cell wide; a **fresh
  batch every training step**;
* physics: exact Fourier diffusion with νT = 8 in **float64** (:func:`physgrad.problems.heat.heat_2d`);
* network (:class:`UNet`): the U-Net of PhiFlow 2.1 ``u_net(1, 1)``: 4 levels of 16 filters,
  3×3 convolutions with batch norm and ReLU, max-pooling and bilinear upsampling, 37 697 weights,
  run in float32;
* prediction (:class:`MeanFixed`): the network's output gets the mean of the data (diffusion keeps
  the mean, so the mean of ``y*`` is that of the true ``x``), in training and evaluation; the
  evaluation also clamps it at ≥ 0 (:func:`predict`);
* SIP's inverse (:func:`paper_inverse`): per-frequency inverse diffusion, damped where the residual's
  amplitude is more likely noise (relative level 10⁻⁶) than signal;
* metric: the mean over 128 test fields of Σ|x_pred − x_true| over the grid (published: Adam 125.0,
  SGD 118.9, SIP 50.4; ``heat/plot_heat_optim.py``).

:func:`bench` is ``python -m physgrad.bench nn-heat``; it also records the reference floors
(:func:`floors`) and the per-wavenumber error spectrum (:func:`error_spectrum`).
"""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

from .. import nn
from . import row

__all__ = ["UNet", "MeanFixed", "paper_boxes", "paper_inverse", "sip_inverse", "predict", "x_l1",
           "extend_equal_steps",
           "error_spectrum", "best_linear_filter", "floors", "train", "PUBLISHED", "SOURCE",
           "GPU_RECIPE", "CPU_RUN", "bench"]

Tensor = torch.Tensor
NU_T = 8.0
PUBLISHED = {"adam": 125.0, "sgd": 118.9, "sip": 50.4}  # test x-L1, Holl et al. 2022 (64x64)
SOURCE = "Holl et al. 2022 (SIP paper), heat experiment; values hard-coded in tum-pbs/SIP heat/plot_heat_optim.py"
# The SGD learning rate of the paper's code is 2e-6 on the loss *summed* over a batch of 128;
# nn.DP averages over the batch, so the same step is 2e-6 * 128.
PAPER_LR = {"adam": 1e-3, "sgd": 2e-6 * 128, "sip": 1e-3}


# ----------------------------------------------------------------------------- network
def _double_conv(cin, cout, cmid):
    return torch.nn.Sequential(
        torch.nn.Conv2d(cin, cmid, 3, padding=1), torch.nn.BatchNorm2d(cmid), torch.nn.ReLU(),
        torch.nn.Conv2d(cmid, cout, 3, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU())


class UNet(torch.nn.Module):
    """The U-Net of PhiFlow 2.1's ``u_net(1, 1)`` (the SIP paper's heat network): ``levels``
    resolutions with ``filters`` channels each, two 3×3 convolutions with batch norm and ReLU per
    block, 2×2 max-pooling down, bilinear upsampling and concatenation up, a 1×1 output
    convolution. ``(B, 1, n, n) -> (B, 1, n, n)``; 37 697 weights for the defaults."""

    def __init__(self, levels: int = 4, filters: int = 16, seed: int = 0):
        super().__init__()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.inc = _double_conv(1, filters, filters)
        self.down = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.MaxPool2d(2), _double_conv(filters, filters, filters))
            for _ in range(levels - 1))
        self.up = torch.nn.ModuleList(_double_conv(2 * filters, filters, filters) for _ in range(levels - 1))
        self.outc = torch.nn.Conv2d(filters, 1, 1)
        torch.random.set_rng_state(gen_state)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inc(x)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")
            x = block(torch.cat([skips.pop(), x], dim=1))
        return self.outc(x)


class MeanFixed(torch.nn.Module):
    """``y* (B, n, n) float64 -> x (B, n, n) float64``: runs ``net`` in float32 and shifts each
    output field to the mean of its input (the paper's mean fix; diffusion conserves the mean, so
    this is the mean of the true initial state). Gradients flow through the shift."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, y: Tensor) -> Tensor:
        x = self.net(y.float().unsqueeze(1)).squeeze(1).to(y.dtype)
        return x + (y.mean((-2, -1), keepdim=True) - x.mean((-2, -1), keepdim=True))


def predict(model: torch.nn.Module, y: Tensor, clamp: bool = True) -> Tensor:
    """The evaluated prediction: ``model(y)`` without gradients, clamped at ≥ 0 (``clamp``), as in
    the paper's evaluation. Batch norm uses the statistics of this batch, as the paper's
    evaluation (which never switches its network to eval mode)."""
    with torch.no_grad():
        x = model(y)
    return x.clamp_min(0.0) if clamp else x


def x_l1(x: Tensor, x_true: Tensor) -> float:
    """The paper's metric: Σ over the grid of |x − x_true|, mean over the batch."""
    return (x - x_true).abs().sum((-2, -1)).mean().item()


# ----------------------------------------------------------------------------- data
def paper_boxes(batch: int, n: int = 64, generator: Optional[torch.Generator] = None,
                dtype=torch.float64, device=None) -> Tensor:
    r"""A batch of the SIP paper's heat initial states, ``(batch, n, n)``, all ≥ 0.

    Per field: ``k`` = 4 + ⌊7u⌋ (4 to 10) of 10 candidate boxes are switched on; box ``i`` has a
    centre uniform in the middle 80 % of the domain ``[0, n]²``, a half-size uniform in
    ``[0, 10)`` cells per axis, strength uniform in ``[0, 1)``, and is shifted to lie inside the
    domain. Each cell (centre ``c``) receives the strength times its soft overlap
    ``clip(½ − s(c)/√2, 0, 1)``, with ``s`` the signed L∞ distance from ``c`` to the box surface,
    as PhiFlow 2.1's ``SoftGeometryMask`` samples a box on unit cells."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    kw = dict(dtype=torch.float64, device="cpu")  # drawn on the CPU, so that a seed gives the same fields anywhere
    count = (4 + 7 * torch.rand(batch, generator=g, **kw)).floor()
    pos = (torch.rand(batch, 10, 2, generator=g, **kw) - 0.5) * (0.8 * n) + 0.5 * n
    half = torch.rand(batch, 10, 2, generator=g, **kw) * 10
    strength = torch.rand(batch, 10, generator=g, **kw) * (torch.arange(10, device="cpu") < count[:, None])
    pos = torch.minimum(torch.maximum(pos, half), n - half)
    c = torch.arange(n, **kw) + 0.5
    # signed L-infinity distance of every cell centre to every box: (batch, 10, n, n)
    dx = (c[None, None, :] - pos[..., 0:1]).abs() - half[..., 0:1]
    dy = (c[None, None, :] - pos[..., 1:2]).abs() - half[..., 1:2]
    dist = torch.maximum(dx[..., :, None], dy[..., None, :])
    frac = (0.5 - dist / 1.414214).clamp(0.0, 1.0)
    return (strength[..., None, None] * frac).sum(1).to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------- SIP's inverse
def paper_inverse(dy: Tensor, nu_T: float = NU_T, rel_noise: float = 1e-6) -> Tensor:
    r"""The SIP paper's damped inverse diffusion of a residual ``dy`` (``(..., n, n)``, float64),
    after ``heat/inv_diffuse.py``: with the unnormalized FFT amplitude ``a_k`` of ``dy``, the decay
    factor ``d_k = exp(−νT|k|²)`` and the noise level ``s = rel_noise·‖dy‖₂``, the probability that
    mode ``k`` is signal is ``p = S/(S+N)`` with ``S = exp(−½(|a_k|/(n·d_k))²)`` and
    ``N = exp(−½(|a_k|/s)²)`` (``p = 0`` where both underflow); the mode is multiplied by
    ``d_k^{−α}`` with ``α = 2(p − ½)``, set to 0 for ½ < p < 0.68. ``α = 1`` inverts the mode, negative
    ``α`` smooths it further. Returns ``dx`` with ``P(x + dx) ≈ P(x) + dy`` on the signal modes."""
    n = dy.shape[-1]
    f = torch.fft.fftfreq(n, d=1.0, dtype=torch.float64, device=dy.device)
    log_kernel = nu_T * (2 * math.pi) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2)  # −log d_k
    amp = torch.fft.fft2(dy)
    s = rel_noise * dy.pow(2).sum((-2, -1), keepdim=True).sqrt()
    a = amp.abs()
    signal = torch.exp(-0.5 * (a * torch.exp(log_kernel) / n) ** 2) * 0.5
    signal = torch.where(torch.isfinite(signal), signal, torch.zeros_like(signal))
    noise = torch.exp(-0.5 * (a / s) ** 2) * 0.5
    total = signal + noise
    safe = torch.where(total > 0, total, torch.ones_like(total))
    p = torch.where(total > 0, signal / safe, torch.zeros_like(total))  # divide, 0 where both are 0
    action = torch.where((p <= 0.5) | (p >= 0.68), 2 * (p - 0.5), torch.zeros_like(p))
    clamped = log_kernel.clamp_max(math.floor(math.log(torch.finfo(torch.float32).max)))
    kernel = torch.exp(clamped * action)
    return torch.fft.ifft2(amp * kernel).real


def sip_inverse(forward, nu_T: float = NU_T, rel_noise: float = 1e-6):
    """``inverse(y, x0) = x0 + paper_inverse(y − P(x0))``: the local inverse that :class:`physgrad.nn.SIP`
    calls (``y`` is the requested output)."""
    def inverse(y, x0):
        return x0 + paper_inverse(y - forward(x0), nu_T, rel_noise)
    return inverse


# ----------------------------------------------------------------------------- analysis
def _radial_bins(n: int, device=None):
    f = torch.fft.fftfreq(n, d=1.0 / n, device=device)
    return torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).round().long()


def error_spectrum(x: Tensor, x_true: Tensor) -> list:
    r"""The radially averaged error spectrum: for each integer wavenumber shell ``|k| = 0, 1, …, n/2``
    (cycles per domain), the mean over the shell's modes and the batch of ``|x̂_pred − x̂_true|``
    (orthonormal FFT, so Σ_k |ê_k|² = Σ_i e_i²)."""
    n = x.shape[-1]
    e = torch.fft.fft2((x - x_true).to(torch.float64), norm="ortho").abs().mean(0)
    shells = _radial_bins(n, e.device)
    out = []
    for k in range(n // 2 + 1):
        m = shells == k
        out.append(e[m].mean().item())
    return out


def best_linear_filter(y: Tensor, x: Tensor) -> Tensor:
    r"""The least-squares convolution filter from ``y`` to ``x`` (``(N, n, n)`` training pairs):
    per frequency ``w_k = Σ x̂ ȳ̂ / Σ |ŷ|²``, on the rfft grid."""
    Y, X = torch.fft.rfft2(y), torch.fft.rfft2(x)
    return (X * Y.conj()).sum(0) / (Y.abs() ** 2).sum(0)


def floors(y_test: Tensor, x_test: Tensor, y_fit: Tensor, x_fit: Tensor) -> dict:
    """Reference estimates of x from ``y_test`` without a network, each mean-fixed and clamped at
    ≥ 0 like the networks' predictions, and their x-L1: ``zero`` (the constant mean field),
    ``identity`` (the diffused field itself), ``sip_inverse`` (:func:`paper_inverse` applied to
    ``y_test`` from zero: what one SIP target is at x = 0) and ``best_linear`` (the least-squares
    filter fitted on ``(y_fit, x_fit)``, applied to the float32-rounded data the networks see)."""
    mean = y_test.mean((-2, -1), keepdim=True)
    n = y_test.shape[-1]
    w = best_linear_filter(y_fit.float().double(), x_fit)
    est = {
        "zero": mean.expand_as(y_test),
        "identity": y_test,
        "sip_inverse": paper_inverse(y_test),
        "best_linear": torch.fft.irfft2(torch.fft.rfft2(y_test.float().double()) * w, s=(n, n)),
    }
    return {k: x_l1(v.clamp_min(0.0), x_test) for k, v in est.items()}


# ----------------------------------------------------------------------------- training
def train(method: str, steps: int, batch: int = 128, n: int = 64, lr: Optional[float] = None,
          seed: int = 0, test: Optional[tuple] = None, eval_every: int = 0, time_budget: Optional[float] = None,
          progress: bool = False, levels: int = 4, filters: int = 16, device=None):
    r"""Train the paper's U-Net with ``method`` ∈ {adam, sgd, sip} on fresh :func:`paper_boxes`
    batches (seeded by ``seed``), through :func:`physgrad.problems.heat.heat_2d` in float64; each
    step is one call of the optimizer object of :func:`physgrad.nn.make_step` (``nn.DP`` for
    adam/sgd, ``nn.SIP`` with :func:`sip_inverse` for sip). ``test = (y, x)`` is evaluated every
    ``eval_every`` steps and at the end (x-L1 after mean fix and clamp). Stops after ``steps`` or
    ``time_budget`` seconds. ``device``: where the fields, the network and the FFTs live (the
    fields are drawn on the CPU, so a seed gives the same data anywhere). Returns ``(model, log)``
    with ``log`` holding the steps, the batch physics losses, the test curve and the wall time."""
    from tqdm import tqdm

    from ..problems.heat import heat_2d

    if method not in PAPER_LR:
        raise ValueError(f"method must be one of {tuple(PAPER_LR)}, got {method!r}")
    prob = heat_2d(n=n, nu_T=NU_T, dtype=torch.float64, device=device)
    model = MeanFixed(UNet(levels, filters, seed=seed)).to(device)
    lr = PAPER_LR[method] if lr is None else lr
    stepper = nn.make_step(method, model, prob.forward, lr=lr, inverse=sip_inverse(prob.forward))
    gen = torch.Generator().manual_seed(10_000 + seed)
    log = {"method": method, "lr": lr, "batch": batch, "losses": [], "curve_steps": [], "curve_x_l1": []}

    def evaluate(k):
        if test is not None and (not log["curve_steps"] or log["curve_steps"][-1] != k):
            log["curve_steps"].append(k)
            log["curve_x_l1"].append(x_l1(predict(model, test[0]), test[1]))

    t0 = time.perf_counter()
    k = 0
    for k in tqdm(range(steps), desc=method, disable=not progress, mininterval=10):
        if eval_every and k % eval_every == 0:
            evaluate(k)
        x = paper_boxes(batch, n, gen, device=device)
        loss = stepper.step(prob.forward(x), prob.forward(x))
        if not math.isfinite(loss):
            raise ValueError(f"{method}: the loss became {loss} at step {k}; lower lr")
        log["losses"].append(loss)
        if time_budget is not None and time.perf_counter() - t0 > time_budget:
            break
    log["steps"] = len(log["losses"])
    log["wall_s"] = time.perf_counter() - t0
    evaluate(log["steps"])
    return model, log


def _test_set(n: int = 64, count: int = 128, seed: int = 0, device=None):
    from ..problems.heat import heat_2d

    prob = heat_2d(n=n, nu_T=NU_T, dtype=torch.float64, device=device)
    x = paper_boxes(count, n, torch.Generator().manual_seed(seed), device=device)
    return prob.forward(x), x


# The reference configuration (the review's run "H2"): the paper's recipe for ≈2·10⁴ steps.
GPU_RECIPE = dict(batch=128, steps=20_000, eval_every=1000)
# The cheaper CPU run (the review's "H3", batch 16, cut to fit ≈15 minutes of a 2-core machine).
CPU_RUN = dict(batch=16, steps=100_000, time_budget=250.0, eval_every=50)
COMMAND_GPU = "python -m physgrad.bench nn-heat --full --device cuda --json results/nn-heat-gpu.json"
COMMAND_CPU = "python -m physgrad.bench nn-heat --json results/nn-heat.json"


def bench(full: bool = False, device=None, seed: int = 0, progress: bool = True) -> dict:
    r"""Benchmark entry ``python -m physgrad.bench nn-heat [--full]`` (experiment 4).

    Default (``setting`` "cpu ..."): the cheaper CPU run: the paper's recipe with batches of 16
    fresh fields and a wall-time budget per method (:data:`CPU_RUN`). ``full=True`` (setting
    "gpu published ..."): the paper's batch of 128 for 2·10⁴ steps (:data:`GPU_RECIPE`), meant for
    a GPU (``--device cuda``; estimated, not measured: 20–40 minutes per method). Both evaluate
    x-L1 on 128 fixed test fields (mean fix and clamp), and record the reference floors (:func:`floors`) and the error
    spectra (:func:`error_spectrum`)."""
    import os

    cfg = dict(GPU_RECIPE if full else CPU_RUN)
    setting = ("gpu published recipe" if full else "cpu cheaper run") + f", batch {cfg['batch']}"
    load0 = os.getloadavg()
    y_test, x_test = _test_set(seed=seed, device=device)
    y_fit, x_fit = _test_set(count=512, seed=seed + 1, device=device)
    fl = floors(y_test, x_test, y_fit, x_fit)
    rows, spectra, curves, logs = [], {}, {}, {}
    diff = None if full else (f"batch {cfg['batch']} instead of 128 and a budget of {cfg['time_budget']:.0f} s "
                              "per method on a shared 2-core CPU instead of 6000 s on a GPU")
    for method in ("adam", "sgd", "sip"):
        model, log = train(method, cfg["steps"], batch=cfg["batch"], seed=seed, test=(y_test, x_test),
                           eval_every=cfg["eval_every"], time_budget=cfg.get("time_budget"), progress=progress,
                           device=device)
        x_pred = predict(model, y_test)
        value = log["curve_x_l1"][-1]
        rows.append(row("heat", setting, method, "x_l1", value, PUBLISHED[method], source=SOURCE,
                        settings_difference=diff, steps=log["steps"], lr=log["lr"], wall_s=log["wall_s"]))
        tail = log["losses"][-20:]
        rows.append(row("heat", setting, method, "final_batch_loss", sum(tail) / len(tail),
                        None, source="this run", steps=log["steps"]))
        spectra[method] = error_spectrum(x_pred, x_test)
        curves[method] = {"steps": log["curve_steps"], "x_l1": log["curve_x_l1"]}
        logs[method] = log["steps"]
    a, s = rows[0]["value"], rows[4]["value"]
    rows.append(row("heat", setting, "adam/sip", "x_l1_ratio", a / s, PUBLISHED["adam"] / PUBLISHED["sip"],
                    source=SOURCE, settings_difference=diff))
    for name, value in fl.items():
        rows.append(row("heat", setting, f"floor: {name}", "x_l1", value, None,
                        source="this run (no training; linear estimate, mean fix and clamp)"))
    spectra["sip_inverse_floor"] = error_spectrum(paper_inverse(y_test).clamp_min(0.0), x_test)
    spectra["k"] = list(range(len(spectra["adam"])))
    return {"config": dict(cfg, n=64, nu_T=NU_T, test_fields=128, fit_fields=512, lrs=PAPER_LR,
                           weights=sum(p.numel() for p in UNet().parameters()), seed=seed,
                           device=str(device or "cpu"), gpu_command=COMMAND_GPU, cpu_command=COMMAND_CPU),
            "load_avg_start": list(load0), "load_avg_end": list(os.getloadavg()),
            "rows": rows, "spectra": spectra, "curves": curves}


def extend_equal_steps(path: str = "results/nn-heat.json", seed: int = 0, progress: bool = True) -> dict:
    r"""Add a step-matched SIP run to a committed CPU result: SIP trained for as many steps as Adam
    took in that file's wall-time run (same seed, data and test fields), so that the comparison
    does not depend on the machine's load. Appends rows with setting "cpu equal steps, ..." and the
    curve ``curves["sip_equal_steps"]`` to the JSON at ``path`` and returns it.
    ``python -m physgrad.experiments.heat --equal-steps results/nn-heat.json``."""
    import json
    import os

    with open(path) as f:
        out = json.load(f)
    adam = next(r for r in out["rows"] if r["method"] == "adam" and r["metric"] == "x_l1")
    cfg = out["config"]
    setting = f"cpu equal steps, batch {cfg['batch']}"
    y_test, x_test = _test_set(seed=seed)
    load0 = os.getloadavg()
    _, log = train("sip", adam["steps"], batch=cfg["batch"], seed=seed, test=(y_test, x_test),
                   eval_every=cfg["eval_every"], progress=progress)
    diff = f"batch {cfg['batch']} instead of 128; {adam['steps']} steps, as many as Adam took in the wall-time run"
    sip = log["curve_x_l1"][-1]
    out["rows"].append(row("heat", setting, "sip", "x_l1", sip, PUBLISHED["sip"], source=SOURCE,
                           settings_difference=diff, steps=log["steps"], lr=log["lr"], wall_s=log["wall_s"]))
    out["rows"].append(row("heat", setting, "adam/sip", "x_l1_ratio", adam["value"] / sip,
                           PUBLISHED["adam"] / PUBLISHED["sip"], source=SOURCE, settings_difference=diff))
    out["curves"]["sip_equal_steps"] = {"steps": log["curve_steps"], "x_l1": log["curve_x_l1"]}
    out["equal_steps"] = {"command": f"python -m physgrad.experiments.heat --equal-steps {path}",
                          "load_avg_start": list(load0), "load_avg_end": list(os.getloadavg())}
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
        f.write("\n")
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m physgrad.experiments.heat")
    ap.add_argument("--equal-steps", metavar="PATH", required=True,
                    help="add a step-matched SIP run to the committed CPU result at PATH")
    args = ap.parse_args()
    torch.set_num_threads(1)
    extend_equal_steps(args.equal_steps)
