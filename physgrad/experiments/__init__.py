"""The book's chapter-8 experiments (not part of the library: ``physgrad`` never imports this).

One module per experiment, each with the functions its notebook calls and a ``bench(full)``
entry behind ``python -m physgrad.bench nn-<name> [--full]``:

* :mod:`~physgrad.experiments.multimodality` — ``y = x^2`` with random-sign labels;
* :mod:`~physgrad.experiments.two_outputs` — two outputs of very different scale (HIG paper);
* :mod:`~physgrad.experiments.coupling` — the (ξ, φ) sweep of the SIP paper;
* :mod:`~physgrad.experiments.oscillators` — control of coupled oscillators (HIG paper);
* :mod:`~physgrad.experiments.heat` — reconstructing diffused temperatures (SIP paper).

:func:`machine_info` and :func:`write_results` give every benchmark JSON the same layout:
``{"machine": {...}, "config": {...}, "rows": [{experiment, setting, method, metric, value,
published}, ...]}``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform

from .. import bench as _bench  # the same CPU-model probe as the benchmark

__all__ = ["machine_info", "write_results", "row", "NAMES"]

NAMES = ("two-outputs", "oscillators", "coupling", "heat")


def machine_info() -> dict:
    """CPU model, core count, torch threads, package versions, load average and the date (UTC)."""
    import numpy
    import torch

    info = {
        "cpu": _bench._cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["load_avg_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def row(experiment, setting, method, metric, value, published=None, **extra) -> dict:
    """One result row; ``published`` is None where the paper gives no number."""
    return dict(experiment=experiment, setting=setting, method=method, metric=metric,
                value=None if value is None else float(value), published=published, **extra)


def write_results(path, out: dict, threads=None) -> dict:
    """Add the machine info and write ``out`` (with a ``rows`` list) as JSON to ``path``;
    ``threads``: the torch thread count the run used (default: the current one)."""
    info = machine_info()
    if threads is not None:
        info["torch_threads"] = threads
    out = {"machine": info, **out}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
        f.write("\n")
    return out
