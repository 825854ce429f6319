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
# 5. The per-position probes on a random ViT-Tiny, blocks 0, 3, 7, 11: rowcol (SGD) and xy (closed-form
#    ridge), one job each on the GPU and then on the CPU; each job's timing from its result.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
WEIGHTS=random
[ -f ../shared/weights/vgg16_imagenet.pth ] && WEIGHTS=../shared/weights/vgg16_imagenet.pth
CORES=$(nproc)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 1. solvers and losses, 472 channels (EfficientNet-Lite0's width), 200 images: GPU, then CPU =="
timeout 50 python bench/bench_solvers.py --device cuda --num-train 200 --channels 472 --kernels 1,3 --targets 1,5 --out "$OUT"
echo "exit $?"
timeout 75 python bench/bench_solvers.py --device cpu --num-train 200 --channels 472 --kernels 1,3 --targets 1,5 --out "$OUT"
echo "exit $?"

echo "== 2. ridge 3x3 on 1,472 channels, 500 images, GPU =="
timeout 45 python bench/bench_solvers.py --device cuda --num-train 500 --channels 1472 --kernels 3 --targets 5 --epochs 1 --out "$OUT"
echo "exit $?"

echo "== 3. precision (VGG16, $WEIGHTS) =="
timeout 45 python bench/bench_precision.py --device cuda --weights "$WEIGHTS" --num-train 500 --num-test 100 \
  --precisions float32,bfloat16,float16 --set "data.num_workers=$((CORES - 1))" --out "$OUT"
echo "exit $?"

echo "== 4. Table 1 at full scale, loss at feature resolution =="
timeout 135 python bench/bench_protocol.py --device cuda --seeds 0 --num-workers $((CORES - 1)) \
  --set train.loss_at=feature --out "$OUT"
echo "exit $?"

echo "== 5. per-position probes, random ViT-Tiny, 4 blocks, 100 + 25 images: GPU, then CPU =="
VIT="backbone=timm backbone.model=vit_tiny_patch16_224 backbone.weights=random backbone.taps=[0,3,7,11]
     readout.kernel=1 readout.feature_size=14 input=natural data.num_train=100 data.num_test=25"
for dev in cuda cpu; do
  for probe in "target=rowcol readout.standardize=channel train.lr=0.01" "target=xy readout.solver=ridge"; do
    name="probe_${dev}_${probe%% *}"; name="${name/=/_}"
    # a fresh feature cache per device: rowcol extracts (and times) the features, xy reads them
    timeout $([ $dev = cuda ] && echo 15 || echo 45) python sweep.py $VIT $probe device=$dev cache.dir="$OUT/probe_cache_$dev" \
      hydra.run.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
    echo "exit $? $name"
    python - "$OUT/$name/result.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
t, m = r.get("timing", {}), r["metrics"]["natural"]
head = m.get("accuracy", m.get("r2"))
print(f"{sys.argv[1]}: total {t.get('total_s', 0):.1f} s, features {t.get('features_s', 0):.1f} s, "
      f"training {t.get('train_s', 0):.1f} s, per-tap probes {t.get('per_tap_s', 0):.1f} s, headline {head:.3f}, "
      f"taps {len(r.get('per_tap', []))}")
PY
  done
done
