#!/usr/bin/env bash
# The GPU checks in one call, for a machine with CUDA (a lent GPU; see docs/benchmarks.md):
#   1. seed-steps/s for R = 1, 2, 4, 8, 16, 32, 64 replicas on cuda, as ratios to R = 1;
#   2. a short 8-seed training on cuda (500 steps, verdicts on), timed;
#   3. a tiny study whose trials each ask for a quarter of the GPU (studies/gpu_smoke.yaml).
# Everything it prints goes to $OUT/gpu_check.log when OUT is set.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-/tmp}/gpu_check.log"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on a GPU machine')"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  echo "== replicas"
  python benchmarks/replicas.py --device cuda --replicas 1,2,4,8,16,32,64
  echo "== 8 seeds, 500 steps on cuda"
  /usr/bin/time -f "wall %e s" python cli.py train --device cuda --seeds 0-7 --steps 500 \
      --set train.eval_every=250 --out "${OUT:-/tmp}/gpu_eight" --overwrite
  echo "== study with gpus: 0.25 per trial"
  /usr/bin/time -f "wall %e s" python cli.py study launch studies/gpu_smoke.yaml --num-gpus 1 \
      --quiet --tracking-uri "sqlite:///${OUT:-/tmp}/gpu_mlflow.db"
  python cli.py study report gpu_smoke --tracking-uri "sqlite:///${OUT:-/tmp}/gpu_mlflow.db"
} 2>&1 | tee "$log"
