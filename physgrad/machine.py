"""Facts about the machine a measurement ran on, and the helpers every benchmark shares.

This module sits at the bottom of the package (it imports nothing from ``physgrad``), so the
benchmark (:mod:`physgrad.bench`, ``physgrad.bench_batch``) and the book's experiments
(``physgrad.experiments``) all import *down* into it and never into each other:

* :func:`machine_info` — one probe (CPU model, cores, load average, threads, BLAS pools, package
  versions, git commit, date) for every JSON under ``results/``;
* :func:`pinned_threads` — torch and every BLAS/OpenMP pool on a given number of threads;
* :func:`parse_choices` — comma-separated command-line names checked against what is allowed;
* :func:`write_results` — a results JSON with the machine info in front.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess

import torch

__all__ = ["machine_info", "pinned_threads", "parse_choices", "write_results", "cpu_model", "blas_pools"]


def blas_pools():
    """The BLAS/OpenMP thread pools loaded in this process (threadpoolctl), or None without it."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return [{"api": d.get("internal_api"), "threads": d.get("num_threads"),
             "library": os.path.basename(d.get("filepath", ""))} for d in threadpoolctl.threadpool_info()]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what Python's ``platform`` module knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


#: environment variables that change how fast large CPU tensors are allocated (PyTorch's huge
#: pages for big allocations, glibc's heap padding and thresholds, a preloaded allocator)
MEMORY_ENV = ("THP_MEM_ALLOC_ENABLE", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
              "LD_PRELOAD")


def _thp_mode():
    """The kernel's transparent-huge-page mode (``always``/``madvise``/``never``), or None."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    i, j = text.find("["), text.find("]")
    return text[i + 1:j] if 0 <= i < j else text.strip()


def machine_info(device="cpu") -> dict:
    """Everything a reader needs to judge a measurement: CPU model, cores, platform, load average
    (1, 5, 15 min), torch threads, BLAS pools, thread and memory-allocation environment variables
    (with the kernel's transparent-huge-page mode), package versions
    (also flat: ``python``, ``torch``, ``numpy``), git commit, date (UTC) and the device (with the
    GPU's name on CUDA)."""
    try:
        from importlib.metadata import version
        physgrad_version = version("physgrad")
    except Exception:   # not installed as a distribution (a bare checkout on sys.path)
        physgrad_version = None
    vers = {"python": platform.python_version(), "torch": torch.__version__, "physgrad": physgrad_version}
    for mod in ("numpy", "scipy", "threadpoolctl"):
        try:
            vers[mod] = __import__(mod).__version__
        except ImportError:
            vers[mod] = None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "load_avg_1_5_15": load, "torch_threads": torch.get_num_threads(), "blas_pools": blas_pools(),
            "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                           "MKL_NUM_THREADS")},
            "env_memory": {k: os.environ.get(k) for k in MEMORY_ENV}, "transparent_hugepage": _thp_mode(),
            "versions": vers, "python": vers["python"], "torch": vers["torch"], "numpy": vers["numpy"],
            "git_commit": _git_commit(), "date_utc": date, "date": date, "device": str(device)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


@contextlib.contextmanager
def pinned_threads(threads: int):
    """Run the body with torch on ``threads`` threads and every BLAS/OpenMP pool that is loaded
    limited to ``threads`` (threadpoolctl; without it the environment variables are all there is)."""
    t0 = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        import numpy  # noqa: F401  (load the BLAS pools that scipy's L-BFGS-B will use)
        import scipy.optimize  # noqa: F401
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits
        ctx = threadpool_limits(limits=threads)
    except ImportError:
        ctx = contextlib.nullcontext()
    try:
        with ctx:
            yield
    finally:
        torch.set_num_threads(t0)


def parse_choices(ap, what: str, text: str, allowed) -> list:
    """The comma-separated names in ``text``; ``ap.error`` (exit 2) on a name not in ``allowed``."""
    names = [t for t in text.split(",") if t]
    for t in names:
        if t not in allowed:
            ap.error(f"unknown {what} {t!r}; choose from {allowed}")
    return names


def write_results(path, out: dict, threads=None, device="cpu") -> dict:
    """Put :func:`machine_info` in front of ``out`` (a dict with a ``rows`` list) and write it as
    JSON to ``path``. ``threads``: the torch thread count the run used (default: the current one)."""
    info = machine_info(device)
    if threads is not None:
        info["torch_threads"] = threads
    out = {"machine": info, **out}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
        f.write("\n")
    return out
