#!/usr/bin/env bash
# Cross-attention (SD1) against joint attention (SD3) at the study's budget (docs/prompts.md, issue 26):
# each prompted config trained one epoch (60,000 images), then evaluate.py at N images: FID and digit
# accuracy from digit-only prompts, and prompt adherence on the 50 held-out prompts (20 images each);
# then a grid per model whose rows are prompts.
#   bash benchmarks/prompt_study.sh [sd1_unet_crossattn] [sd3_mmdit_joint]     (default: both)
#   IMAGES=640 N=20 PER_PROMPT=1 bash benchmarks/prompt_study.sh sd1_unet_crossattn   a smoke test (a minute)
#   OVERRIDES="training.text_lr_scale=0.25" OUT=experiments/prompt_textlr bash benchmarks/prompt_study.sh sd3_mmdit_joint
#                                                 the same with config overrides, into another folder
#   EVAL_ARGS="--fid-prompts captions --cfg-scale 2" ...   evaluate.py's options (FID from the training images' own prompts)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/prompt_study}
IMAGES=${IMAGES:-60000}
N=${N:-1000}
PER_PROMPT=${PER_PROMPT:-20}
PYTHON=${PYTHON:-python3}
read -r -a OVERRIDES <<< "${OVERRIDES:-}"   # KEY=VALUE words for train.py, as on its command line
read -r -a EVAL_ARGS <<< "${EVAL_ARGS:-}"   # options for evaluate.py
PROMPTS=("a 3" "a thin 3" "a thick 3" "a left-slanted 3" "a right-slanted 3" "a narrow 3" "a wide 3"
         "a thick, left-slanted, narrow 1" "a thin, right-slanted, wide 7")
mkdir -p "$OUT"
rows=("$@"); [ ${#rows[@]} -eq 0 ] && rows=(sd1_unet_crossattn sd3_mmdit_joint)
for row in "${rows[@]}"; do
  config=configs/prompt/$row.yaml
  [ -f "$config" ] || { echo "no config $config" >&2; exit 2; }
  ckpt=$OUT/$row/checkpoints/model_epoch_1.pt
  $PYTHON train.py --config "$config" training.output_dir=$OUT training.epochs=1 training.max_images=$IMAGES \
      ${OVERRIDES[@]+"${OVERRIDES[@]}"} --overwrite > "$OUT/$row.train.log" 2>&1 || { echo "$row: training failed, see $OUT/$row.train.log"; exit 1; }
  $PYTHON evaluate.py --checkpoint "$ckpt" --n "$N" --adherence-per-prompt "$PER_PROMPT" --out "$OUT/$row.json" \
      ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"} > /dev/null 2> "$OUT/$row.eval.log" || { echo "$row: evaluation failed, see $OUT/$row.eval.log"; exit 1; }
  args=(); for p in "${PROMPTS[@]}"; do args+=(--prompt "$p"); done
  $PYTHON sample.py --checkpoint "$ckpt" --n 8 --out "$OUT/$row.prompts.png" "${args[@]}" > /dev/null 2>&1
  $PYTHON - "$OUT/$row.json" "$row" <<'PY'
import json, sys
d, row = json.load(open(sys.argv[1])), sys.argv[2]
a = d["adherence"]
print(f"{row}: FID {d['fid']:.2f} (floor {d['fid_floor']:.2f}), accuracy {100 * d['accuracy']:.1f}% "
      f"from {'captions' if d.get('prompts') == 'captions' else 'a <digit>'}, "
      f"{100 * a['accuracy']:.1f}% from the held-out prompts")
for name, r in a["attributes"].items():
    print(f"  {name:<10} hit {100 * r['hit_rate']:5.1f}%  chance {100 * r['chance']:5.1f}%  correlation {r['correlation']:.2f}")
for kind in ("common", "rare"):
    r = a[f"{kind}_combinations"]
    print(f"  all three, {kind:<6} {100 * r['all_three_hit']:5.1f}%  chance {100 * r['chance']:5.1f}%")
PY
  echo "  grid, a row per prompt: $OUT/$row.prompts.png"
done
