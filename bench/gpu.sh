#!/usr/bin/env bash
# The GPU measurements of issue 15 in one run (sized for about 10 minutes on one large GPU):
#   1. the block product's cost per vector against single products (CIFAR CNN, 512 samples),
#   2. the 51x51 CIFAR CNN surface on 10,000 samples (target: under 60 s) against the forward floor,
#   3. top-50 Hessian eigenvalues of ResNet-18-GN on 50,000 CIFAR-shaped samples (target: under 10 minutes),
#   4. the batched training engine against the sequential one (target: at least 5x).
# Usage, on the GPU machine from the repository root:  bash bench/gpu.sh OUT_DIR [STEP ...]
# (steps: block surface resnet_top50 train; default all, about 14 minutes at most: split them over two
# calls where one command may run 10 minutes; surface_tf32, not in the default, is the surface in TF32 with
# its loss error against float32). Each step's output goes to OUT_DIR/<step>.txt; a step that fails or runs
# out of time does not stop the others. Every step was run on a CPU at small sizes (bench/*.py --device cpu).
set -uo pipefail
out=${1:-gpu-results}
shift || true
steps=" ${*:-block surface resnet_top50 train} "
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 seconds=$2; shift 2
    [[ $steps == *" $name "* ]] || return 0
    echo "== $name: $*" | tee "$out/$name.txt"
    /usr/bin/time -f "wall %e s" timeout "$seconds" "$@" >> "$out/$name.txt" 2>&1
    echo "exit $?" >> "$out/$name.txt"
    tail -4 "$out/$name.txt"
}
step block 120 python bench/block.py --device cuda --ks 5 --modes cached --reps 2 --json "$out/block.json"
step surface 150 python bench/surface.py --gpu-target --repeats 1
step surface_tf32 150 python bench/surface.py --gpu-target --repeats 1 --precision tf32
[[ $steps == *" resnet_top50 "* ]] && python - "$out/resnet18gn.pt" <<'PY'
import sys
from landscape import checkpoint, models
model = models.build("resnet18-gn", num_classes=10)
checkpoint.save(checkpoint.from_model(model, "resnet18-gn", {"num_classes": 10}), sys.argv[1])
PY
step resnet_top50 420 python -m landscape hessian "$out/resnet18gn.pt" --data synthetic:n=50000 --top-k 50 \
    --device cuda --out "$out/resnet_top50.json"
step train 150 python bench/train.py --device cuda --rounds 2 --warmup 1 --no-flower
