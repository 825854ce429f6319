#!/usr/bin/env bash
# The GPU figures of the paper-scale protocol in one short run (one H100/H200: about 10 min).
# Prints everything; the CSVs go to ${OUT:-bench/results}. Each step has its own time limit,
# so one that hangs cannot take the others' time.
#
#   bash bench/gpu_checks.sh            # from the checkout's root, on the GPU machine
#
# 1. backbone.precision: bf16/fp16 autocast against float32 (features and SPC), VGG16.
# 2. The paper's Table 1 end to end at full DUTS scale (10,553 + 850 stand-in JPEGs), one
#    seed, fused training, features in device memory; the authors' design estimated.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
WEIGHTS=random
[ -f ../shared/weights/vgg16_imagenet.pth ] && WEIGHTS=../shared/weights/vgg16_imagenet.pth
CORES=$(nproc)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 1. precision (VGG16, $WEIGHTS) =="
timeout 240 python bench/bench_precision.py --device cuda --weights "$WEIGHTS" --num-train 2000 --num-test 200 \
  --precisions float32,bfloat16,float16 --set "data.num_workers=$((CORES - 1))" --out "$OUT"
echo "exit $?"

echo "== 2. Table 1 at full scale =="
timeout 420 python bench/bench_protocol.py --device cuda --seeds 0 --num-workers $((CORES - 1)) --out "$OUT"
echo "exit $?"
