"""The book's chapter-8 experiments (not part of the library: ``physgrad`` never imports this).

One module per experiment, each with the functions its notebook calls and a ``bench(full)``
entry behind ``python -m physgrad.bench nn-<name> [--full]``:

* :mod:`~physgrad.experiments.multimodality` — ``y = x^2`` with random-sign labels;
* :mod:`~physgrad.experiments.two_outputs` — two outputs of very different scale (HIG paper);
* :mod:`~physgrad.experiments.coupling` — the (ξ, φ) sweep of the SIP paper;
* :mod:`~physgrad.experiments.oscillators` — control of coupled oscillators (HIG paper);
* :mod:`~physgrad.experiments.heat` — reconstructing diffused temperatures (SIP paper).

:func:`~physgrad.machine.machine_info` and :func:`~physgrad.machine.write_results` (re-exported here) give every benchmark JSON the same layout:
``{"machine": {...}, "config": {...}, "rows": [{experiment, setting, method, metric, value,
published}, ...]}``.
"""

from __future__ import annotations


from ..machine import machine_info, write_results  # one probe for every results JSON

__all__ = ["machine_info", "write_results", "row", "NAMES"]

NAMES = ("two-outputs", "oscillators", "coupling", "heat")


def row(experiment, setting, method, metric, value, published=None, source=None, **extra) -> dict:
    """One result row; ``published`` is None where the paper gives no number, and ``source`` names
    where a published number comes from (paper and figure, or repository file; None without one)."""
    return dict(experiment=experiment, setting=setting, method=method, metric=metric,
                value=None if value is None else float(value), published=published, source=source, **extra)
