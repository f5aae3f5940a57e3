#!/usr/bin/env bash
# A prepared GPU check (at most ~5 minutes on one H100): one epoch of the SD3 config
# eager in fp32, then compiled with bf16 autocast, and the speedup between them.
#   bash benchmarks/gpu_check.sh            (BATCH=512 bash ... to try a larger batch)
# Target (issue 9): 100 epochs of a main config in under 10 minutes on one H100,
# i.e. at least 6,000,000 images / 600 s = 10,000 images/s.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/unified_sd3_mmdit_flow.yaml}
BATCH=${BATCH:-128}
OUT=${OUT:-/tmp/difflab_gpu_check}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"
python setup_mnist.py
common=(--config "$CONFIG" training.epochs=1 training.batch_size="$BATCH" training.log_every=50
        sampling.n_per_class=1 sampling.steps=10)
python train.py --overwrite "${common[@]}" training.compile=false training.precision=fp32 training.output_dir="$OUT/eager"
python train.py --overwrite "${common[@]}" training.compile=true training.precision=bf16 training.output_dir="$OUT/compiled"
python - "$OUT" "$(basename "$CONFIG" .yaml)" <<'PY'
import json, statistics, sys
out, name = sys.argv[1], sys.argv[2]
def ips(run):
    rows = [json.loads(l) for l in open(f"{out}/{run}/{name}/metrics.jsonl")]
    steady = rows[1:] or rows  # the first interval holds compilation and warm-up
    return statistics.median(r["images_per_s"] for r in steady)
eager, fast = ips("eager"), ips("compiled")
print(f"eager fp32           : {eager:10.0f} images/s")
print(f"compile + bf16       : {fast:10.0f} images/s")
print(f"speedup              : {fast / eager:10.2f}x")
print(f"100 epochs (6M imgs) : {6e6 / fast / 60:10.1f} minutes at the compiled rate (target < 10)")
PY
