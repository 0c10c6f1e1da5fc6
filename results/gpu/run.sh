#!/usr/bin/env bash
# The GPU checks of issue 16, as run on the lent device machine (one NVIDIA H100, 16 CPU cores).
# Parts, in the order given:
#   tests  the CUDA unit tests (and the matfree / batched ones, on that machine's torch)
#   cuda   physgrad.bench on heat-2d at 256², 512², 1024² on the GPU (float64; float32 at 1024²)
#   cpu1   the same cases on that machine's CPU, one torch and one BLAS thread (the bench default)
#   cpu16  the same with 16 threads (SciPy's BLAS then oversubscribes the cores: see README.md)
# Usage, from the repository root: OUT=results/gpu bash results/gpu/run.sh tests cuda cpu1
# Needs torch (with CUDA), scipy, numpy, threadpoolctl, tqdm and pytest; physgrad from this checkout.
set -u
O=${OUT:-results/gpu}
mkdir -p "$O"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
M=pg,ig,scipy-lbfgsb,torch-lbfgs,lbfgs
part_tests() {
  timeout 200 python3 -m pytest -q -o addopts="" -p no:cacheprovider -k "cuda or matfree or batched" \
    tests/test_optimize.py tests/test_matfree.py tests/test_batched.py
}
part_cuda() {
  for n in 256 512 1024; do
    timeout 150 python3 -m physgrad.bench --device cuda --cases heat-2d --n heat-2d=$n --methods $M \
      --repeats 3 --json "$O/cuda-$n.json"
  done
  timeout 120 python3 -m physgrad.bench --device cuda --dtype float32 --cases heat-2d --n heat-2d=1024 \
    --methods $M --repeats 3 --json "$O/cuda-f32-1024.json"
}
part_cpu() {  # $1 = threads
  for n in 256 512 1024; do
    timeout 200 python3 -m physgrad.bench --device cpu --threads "$1" --cases heat-2d --n heat-2d=$n \
      --methods pg,ig,scipy-lbfgsb,torch-lbfgs --repeats 3 --json "$O/cpu$1-$n.json"
  done
}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests cuda cpu1)
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, scipy, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'scipy', scipy.__version__, 'numpy', numpy.__version__)"
  for part in "${parts[@]}"; do
    case $part in
      tests) part_tests ;;
      cuda) part_cuda ;;
      cpu1) part_cpu 1 ;;
      cpu16) part_cpu 16 ;;
      *) echo "unknown part $part" ;;
    esac
  done
  date -u
} 2>&1 | tee "$O/log-$(IFS=-; echo "${parts[*]}").txt"
