#!/usr/bin/env bash
# Does the hourglass (model.hourglass: true; HDiT, Crowson et al. 2024) keep the transformers' quality? Trains the SD3
# MMDiT and the DiT with it for one epoch (60,000 images, training seed 0, as `make compare` trains every config)
# and scores each with evaluate.py (N images, sampling seed 0), to set beside the same configs without it in
# docs/results/study.json. Speed: benchmarks/transformer_throughput.py. Publishes docs/results/hourglass.json.
#   bash benchmarks/hourglass_quality.sh      (about half an hour on 2 CPU cores; resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/hourglass}
N=${N:-1000}
IMAGES=${IMAGES:-60000}
PUBLISH=${PUBLISH-hourglass}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT/scores"
labels=()
for pair in "SD3 MMDiT flow, hourglass:configs/unified_sd3_mmdit_flow.yaml" \
            "DiT flow, hourglass:configs/reference/dit_transformer.yaml"; do
  label=${pair%%:*} config=${pair#*:}
  name=$(basename "$config" .yaml)
  run=$OUT/$name/checkpoints
  if [ ! -f "$OUT/$name/done" ]; then
    resume=; [ -f "$run/last.pt" ] && resume=--resume
    $PYTHON train.py --config "$config" model.hourglass=true training.epochs=1 training.max_images="$IMAGES" \
      training.output_dir="$OUT" training.threads=2 $resume > "$OUT/$name.train.log" 2>&1 \
      || { echo "$label: training failed, see $OUT/$name.train.log" >&2; exit 1; }
    touch "$OUT/$name/done"
  fi
  file=$OUT/scores/$name.json
  if [ ! -s "$file" ]; then
    $PYTHON evaluate.py --checkpoint "$run/model_epoch_1.pt" --n "$N" --seed 0 --out "$file" > /dev/null \
      2> "$file.log" || { echo "$label: evaluation failed, see $file.log" >&2; rm -f "$file"; exit 1; }
  fi
  labels+=("$label (1 epoch)=$file")
done
if [ -n "$PUBLISH" ]; then
  $PYTHON compare_models.py --evaluations "${labels[@]}" --as "$PUBLISH"
else
  printf '%s\n' "${labels[@]}"
fi
