#!/usr/bin/env bash
# SDXL's micro-conditioning (issue 48, docs/microcond.md): SD1 trained on reframed digits (configs/microcond/
# sd1_reframed.yaml, told nothing) against the same told each digit's size and crop (sdxl_microcond.yaml), 60,000
# images, training seeds 0, 1, 2; each scored by evaluate.py at N images asked for MNIST's own framing: FID,
# accuracy, and the shares of cut-off and tiny digits (its "framing" entry). Publishes docs/results/microcond.json.
# Resumable, and on a new clone it measures only the rows that file lacks (RESTORE=0: measure them all again).
#   bash benchmarks/microcond_study.sh       (about 1 hour on 2 CPU cores)
#   IMAGES=640 N=20 SEEDS=1 OUT=/tmp/mc PUBLISH= bash benchmarks/microcond_study.sh    a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/microcond}
IMAGES=${IMAGES:-60000}
N=${N:-1000}
SEEDS=${SEEDS:-3}
PUBLISH=${PUBLISH-microcond}  # empty: list the scores, publish nothing
source benchmarks/lib.sh  # train_once, score_once, restore_published, missing, publish, PYTHON
declare -A LABEL=([sd1_reframed]="SD1, reframed digits, told nothing" [sdxl_microcond]="SDXL micro-conditioning, told size and crop")
labels=()  # LABEL=SCORES.json, in the published table's order
for seed in $(seq 0 $((SEEDS - 1))); do
  for name in sd1_reframed sdxl_microcond; do labels+=("${LABEL[$name]}, seed $seed=$OUT/seed$seed/$name.json"); done
done
restore_published "$PUBLISH" "$N" "${labels[@]}"  # a new clone measures only what docs/results/ does not hold
for seed in $(seq 0 $((SEEDS - 1))); do
  for name in sd1_reframed sdxl_microcond; do
    dir=$OUT/seed$seed
    missing "$dir/$name.json" || continue
    ckpt=$dir/$name/checkpoints/model_epoch_1.pt
    train_once "$name, seed $seed" "$ckpt" "$dir.$name.train.log" --config "configs/microcond/$name.yaml" \
        training.output_dir="$dir" training.epochs=1 training.max_images="$IMAGES" training.seed="$seed"
    score_once "$name, seed $seed" "$dir/$name.json" --checkpoint "$ckpt" --n "$N"
  done
done
publish "$PUBLISH" "${labels[@]}"
