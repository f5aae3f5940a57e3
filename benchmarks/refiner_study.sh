#!/usr/bin/env bash
# SDXL's refiner (issue 48, docs/microcond.md, section 4) at SD1's total parameters and training images: a half-size
# SD1 (configs/refiner/sdxl_base.yaml) trained on IMAGES/2 images at every noise level, and an expert of the same
# size (sdxl_refiner.yaml) trained on the other IMAGES/2 at the levels below cascade.refine_below only; training
# seeds 0, 1, 2. SD1 on IMAGES = 60,000 images over the same seeds is the README's study (docs/results/study.json).
# Each scored by evaluate.py at N: base and refiner together, and the base alone (what the refiner adds).
# Publishes docs/results/refiner.json. Resumable, and on a new clone it measures only the rows that file lacks
# (RESTORE=0: measure them all again).
#   bash benchmarks/refiner_study.sh       (about 30 minutes on 2 quiet CPU cores)
#   IMAGES=640 N=20 SEEDS=1 OUT=/tmp/rs PUBLISH= bash benchmarks/refiner_study.sh    a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/refiner}
IMAGES=${IMAGES:-60000}
N=${N:-1000}
SEEDS=${SEEDS:-3}
PUBLISH=${PUBLISH-refiner}  # empty: list the scores, publish nothing
source benchmarks/lib.sh  # train_once, score_once, restore_published, missing, publish, PYTHON
labels=()  # LABEL=SCORES.json, in the published table's order
for seed in $(seq 0 $((SEEDS - 1))); do
  labels+=("half-size SD1 base alone, seed $seed=$OUT/seed$seed/sdxl_base.json"
           "base and refiner, seed $seed=$OUT/seed$seed/sdxl_refiner.json")
done
restore_published "$PUBLISH" "$N" "${labels[@]}"  # a new clone measures only what docs/results/ does not hold
for seed in $(seq 0 $((SEEDS - 1))); do
  dir=$OUT/seed$seed
  missing "$dir/sdxl_base.json" "$dir/sdxl_refiner.json" || continue
  budget=(training.output_dir="$dir" training.epochs=1 training.seed="$seed" training.max_images=$((IMAGES / 2)))
  base=$dir/sdxl_base/checkpoints/model_epoch_1.pt
  train_once "base, seed $seed" "$base" "$dir.sdxl_base.train.log" --config configs/refiner/sdxl_base.yaml \
      "${budget[@]}"
  score_once "base, seed $seed" "$dir/sdxl_base.json" --checkpoint "$base" --n "$N"
  refiner=$dir/sdxl_refiner/checkpoints/model_epoch_1.pt
  train_once "refiner, seed $seed" "$refiner" "$dir.sdxl_refiner.train.log" \
      --config configs/refiner/sdxl_refiner.yaml "${budget[@]}" cascade.base="$base"
  score_once "refiner, seed $seed" "$dir/sdxl_refiner.json" --checkpoint "$refiner" --n "$N"
done
publish "$PUBLISH" "${labels[@]}"
