#!/usr/bin/env bash
# The quickstart's recipe (issue 46, part 4; docs/lab/quickstart.md): which config, sampler, steps and guidance draw
# the best digits from the quickstart's budget of QUICK_IMAGES training images (38,400: about 3 minutes of training
# on 2 CPU cores)? Trains each candidate config once on that budget, scores each (config, sampler) pair with
# evaluate.py (N images, seed 0, the study's judge) and publishes the table docs/results/quickstart.json.
#   bash benchmarks/quickstart_recipes.sh        (about 45 minutes on 2 CPU cores; resumable: run it again)
#   QUICK_IMAGES=640 N=40 OUT=/tmp/qs PUBLISH= bash benchmarks/quickstart_recipes.sh     a smoke test
# The target: accuracy >= 97% and FID <= 3x the floor. Training seconds are this machine's, wall clock, alone.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/quickstart_recipes}
N=${N:-1000}
QUICK_IMAGES=${QUICK_IMAGES:-38400}
PUBLISH=${PUBLISH-quickstart}  # empty: list the scores, publish nothing
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT/scores"

train() {  # config: train it on the quickstart's budget once (what `make quickstart` runs, bar the config)
  local config=$1 name
  name=$(basename "$config" .yaml)
  [ -f "$OUT/$name/done" ] && return 0
  rm -rf "${OUT:?}/$name"
  $PYTHON train.py --config "$config" training.epochs=1 training.max_images="$QUICK_IMAGES" \
    training.output_dir="$OUT" training.threads=2 > "$OUT/$name.train.log" 2>&1 \
    || { echo "$name: training failed, see $OUT/$name.train.log" >&2; exit 1; }
  touch "$OUT/$name/done"
}

labels=()
score() {  # label config evaluate.py-options...: score the config's quickstart checkpoint once
  local label=$1 name
  name=$(basename "$2" .yaml); shift 2
  local file=$OUT/scores/$(echo "$label" | tr -c 'A-Za-z0-9.\n' '_').json
  if [ ! -s "$file" ]; then
    local ckpt=$OUT/$name/checkpoints/model_epoch_1.pt
    $PYTHON evaluate.py --checkpoint "$ckpt" --n "$N" --seed 0 "$@" --out "$file" > /dev/null 2> "$file.log" \
      || { echo "$label: evaluation failed, see $file.log" >&2; rm -f "$file"; exit 1; }
    # what the recipe cost to train, from its checkpoint: the table's last column
    PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} $PYTHON - "$ckpt" "$file" <<'PY'
import json, sys
from difflab.infra.checkpoint import load_checkpoint
state, path = load_checkpoint(sys.argv[1]), sys.argv[2]
result = json.load(open(path))
result["training"] = {"images": int(state["images_seen"]), "seconds": round(float(state["seconds"]), 1),
                      "cpu_seconds": round(float(state.get("cpu_seconds") or 0.0), 1)}
json.dump(result, open(path, "w"), indent=2)
PY
  fi
  labels+=("$label=$file")
}

SD1=configs/unified_sd1_unet_eps.yaml
SD2=configs/unified_sd2_unet_v.yaml
FLOW=configs/reference/unet_flow.yaml
for config in $SD1 $SD2 $FLOW; do train $config; done

score "SD1 U-Net eps (before), DDIM 50 steps, eta 1, CFG 1.5" $SD1
score "SD2 U-Net v, DDIM 50 steps, eta 1, CFG 1.25" $SD2
score "U-Net rectified flow, Euler 50 steps, CFG 1.5" $FLOW
score "U-Net rectified flow, Euler 20 steps, CFG 1.5" $FLOW --steps 20
score "U-Net rectified flow, Euler 20 steps, CFG 1.75" $FLOW --steps 20 --cfg-scale 1.75
score "U-Net rectified flow, Euler 20 steps, CFG 2.0" $FLOW --steps 20 --cfg-scale 2.0
score "SD2 U-Net v, DDIM 20 steps, eta 1, CFG 1.25" $SD2 --steps 20
score "SD2 U-Net v, DDIM 50 steps, eta 1, CFG 2.0" $SD2 --cfg-scale 2.0

if [ -n "$PUBLISH" ]; then
  $PYTHON compare_models.py --evaluations "${labels[@]}" --as "$PUBLISH"
else
  printf '%s\n' "${labels[@]}"
fi
