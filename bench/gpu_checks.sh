#!/usr/bin/env bash
# The GPU figures in one short run: at most 8 minutes of device time on one H100/H200, each step
# with its own time limit so one that hangs cannot take the others' time. Prints everything;
# the CSVs go to ${OUT:-bench/results}.
#
#   bash bench/gpu_checks.sh            # from the checkout's root, on the GPU machine
#
# 1. The readout's fit per solver and loss (bench_solvers.py): SGD with the loss at image and at
#    feature resolution, the closed-form ridge readout 1×1 and 3×3, one and five targets, on the
#    same features, on the GPU and then the same work on this machine's CPU cores.
# 2. The 3×3 ridge readout on VGG16's width (1,472 channels, 13,249 weights), GPU only: hours on a CPU.
# 3. backbone.precision: bf16/fp16 autocast against float32 (features and SPC), VGG16.
# 4. The paper's Table 1 end to end at full DUTS scale (10,553 + 850 stand-in JPEGs), one seed,
#    fused training with train.loss_at=feature, features in device memory; the authors' design estimated.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
WEIGHTS=random
[ -f ../shared/weights/vgg16_imagenet.pth ] && WEIGHTS=../shared/weights/vgg16_imagenet.pth
CORES=$(nproc)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 1. solvers and losses, 472 channels (EfficientNet-Lite0's width), 200 images: GPU, then CPU =="
timeout 60 python bench/bench_solvers.py --device cuda --num-train 200 --channels 472 --kernels 1,3 --targets 1,5 --out "$OUT"
echo "exit $?"
timeout 120 python bench/bench_solvers.py --device cpu --num-train 200 --channels 472 --kernels 1,3 --targets 1,5 --out "$OUT"
echo "exit $?"

echo "== 2. ridge 3x3 on 1,472 channels, 500 images, GPU =="
timeout 60 python bench/bench_solvers.py --device cuda --num-train 500 --channels 1472 --kernels 3 --targets 5 --epochs 1 --out "$OUT"
echo "exit $?"

echo "== 3. precision (VGG16, $WEIGHTS) =="
timeout 60 python bench/bench_precision.py --device cuda --weights "$WEIGHTS" --num-train 500 --num-test 100 \
  --precisions float32,bfloat16,float16 --set "data.num_workers=$((CORES - 1))" --out "$OUT"
echo "exit $?"

echo "== 4. Table 1 at full scale, loss at feature resolution =="
timeout 180 python bench/bench_protocol.py --device cuda --seeds 0 --num-workers $((CORES - 1)) \
  --set train.loss_at=feature --out "$OUT"
echo "exit $?"
