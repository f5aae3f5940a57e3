#!/usr/bin/env bash
# Imagen's cascade (issue 48, docs/cascade.md) at the single-stage U-Net's total parameters and training images: the
# 14x14 base on IMAGES/2 images and the 28x28 super-resolution stage on the other IMAGES/2, trained with noise
# conditioning augmentation (configs/cascade/sr_28.yaml) and without (sr_28_no_aug.yaml, CDM's ablation); training
# seeds 0, 1, 2. SD1 on IMAGES = 60,000 images over the same seeds is the README's study (docs/results/study.json,
# `make compare-all`), scored the same way. Each model scored by evaluate.py at N:
#   the whole cascade (the base draws, the stage enlarges) and the base alone (enlarged bilinearly);
#   on seed 0, each stage given real test digits shrunk to 14x14 instead of the base's drawings (a perfect base: an
#   upper bound whose FID flatters, the inputs being the test set's own digits), and the augmented stage sampled at
#   other augmentation levels (sampling.aug_level), which is how the config's level was chosen.
# Publishes docs/results/cascade.json. Resumable, and on a new clone it scores only the rows docs/results/cascade.json
# lacks (lib.sh's restore_published; delete a row's file to measure it again, or RESTORE=0 for all of them).
#   bash benchmarks/cascade_study.sh       (about 50 minutes on 2 quiet CPU cores)
#   IMAGES=640 N=20 SEEDS=1 LEVELS=0.5 OUT=/tmp/cs PUBLISH= bash benchmarks/cascade_study.sh    a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/cascade}
IMAGES=${IMAGES:-60000}
N=${N:-1000}
SEEDS=${SEEDS:-3}
LEVELS=${LEVELS:-0.0 0.1 0.4}  # besides the config's 0.2
PUBLISH=${PUBLISH-cascade}  # empty: list the scores, publish nothing
source benchmarks/lib.sh  # train_once, score_once, restore_published, missing, PYTHON
HALF=$((IMAGES / 2))
declare -A LABEL=([sr_28]="cascade, augmented" [sr_28_no_aug]="cascade, not augmented")
labels=()  # LABEL=SCORES.json, in the published table's order
for seed in $(seq 0 $((SEEDS - 1))); do
  labels+=("base 14x14 alone, enlarged, seed $seed=$OUT/seed$seed/base_14.json")
  for name in sr_28 sr_28_no_aug; do labels+=("${LABEL[$name]}, seed $seed=$OUT/seed$seed/$name.json"); done
done
for name in sr_28 sr_28_no_aug; do
  labels+=("${LABEL[$name]}, given real 14x14 digits, seed 0=$OUT/seed0/$name.real.json")
done
for level in $LEVELS; do
  labels+=("cascade, augmented, sampled at level $level, seed 0=$OUT/seed0/sr_28.aug$level.json")
done
restore_published "$PUBLISH" "$N" "${labels[@]}"  # a new clone scores only what docs/results/ does not hold

for seed in $(seq 0 $((SEEDS - 1))); do
  dir=$OUT/seed$seed
  needed=()  # this seed's score files, from the labels
  for pair in "${labels[@]}"; do [[ ${pair#*=} == "$dir/"* ]] && needed+=("${pair#*=}"); done
  missing "${needed[@]}" || continue  # every score of this seed is in hand: nothing to train
  budget=(training.output_dir="$dir" training.epochs=1 training.seed="$seed")
  base=$dir/base_14/checkpoints/model_epoch_1.pt
  train_once "base, seed $seed" "$base" "$dir.base_14.train.log" --config configs/cascade/base_14.yaml \
      "${budget[@]}" training.max_images="$HALF"
  score_once "base, seed $seed" "$dir/base_14.json" --checkpoint "$base" --n "$N"
  for name in sr_28 sr_28_no_aug; do
    sr=$dir/$name/checkpoints/model_epoch_1.pt
    train_once "$name, seed $seed" "$sr" "$dir.$name.train.log" --config "configs/cascade/$name.yaml" \
        "${budget[@]}" training.max_images="$HALF" cascade.base="$base"
    score_once "$name, seed $seed" "$dir/$name.json" --checkpoint "$sr" --n "$N"
  done
done
for name in sr_28 sr_28_no_aug; do  # seed 0's stages given real digits
  score_once "$name on real digits" "$OUT/seed0/$name.real.json" \
      --checkpoint "$OUT/seed0/$name/checkpoints/model_epoch_1.pt" --n "$N" --set sampling.low_res_from=real --set sampling.aug_level=0
done
for level in $LEVELS; do  # the augmented stage of seed 0 sampled at other levels
  score_once "sr_28 at aug_level $level" "$OUT/seed0/sr_28.aug$level.json" \
      --checkpoint "$OUT/seed0/sr_28/checkpoints/model_epoch_1.pt" --n "$N" --set sampling.aug_level="$level"
done
publish "$PUBLISH" "${labels[@]}"
