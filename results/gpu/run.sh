#!/usr/bin/env bash
# The GPU checks of issue 16, as run on the lent device machine (one NVIDIA H100, 16 CPU cores):
#   the CUDA unit tests, then `physgrad.bench` on heat-2d at 256², 512² and 1024² on the GPU
#   (float64, and float32 at 1024²) and, on the same machine, on its CPU with all 16 threads.
# Usage, from the repository root: OUT=results/gpu bash results/gpu/run.sh
# Needs torch (with CUDA), scipy, numpy, threadpoolctl, tqdm and pytest; physgrad from this checkout.
set -u
O=${OUT:-results/gpu}
mkdir -p "$O"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
M=pg,ig,scipy-lbfgsb,torch-lbfgs,lbfgs
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, scipy, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'scipy', scipy.__version__, 'numpy', numpy.__version__)"
  timeout 200 python3 -m pytest -q -o addopts="" -p no:cacheprovider -k "cuda or matfree or batched" \
    tests/test_optimize.py tests/test_matfree.py tests/test_batched.py
  for n in 256 512 1024; do
    timeout 150 python3 -m physgrad.bench --device cuda --cases heat-2d --n heat-2d=$n --methods $M \
      --repeats 3 --json "$O/cuda-$n.json"
  done
  timeout 120 python3 -m physgrad.bench --device cuda --dtype float32 --cases heat-2d --n heat-2d=1024 \
    --methods $M --repeats 3 --json "$O/cuda-f32-1024.json"
  for n in 256 512 1024; do
    timeout 200 python3 -m physgrad.bench --device cpu --threads 16 --cases heat-2d --n heat-2d=$n \
      --methods pg,ig,scipy-lbfgsb,torch-lbfgs --repeats 3 --json "$O/cpu16-$n.json"
  done
  date -u
} 2>&1 | tee "$O/log.txt"
