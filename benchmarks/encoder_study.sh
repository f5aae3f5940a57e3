#!/usr/bin/env bash
# Which text encoder reads prompts best at this budget? (issue 47, docs/encoders.md; Imagen's question, Saharia et
# al. 2022, Sec. 4.4). The prompted SD1 U-Net three ways, each trained on 60,000 images with training seeds 0, 1, 2:
#   joint  configs/prompt/sd1_unet_crossattn.yaml    its text encoder trained with it (the study's prompted SD1)
#   clip   configs/prompt/sd1_unet_clip_frozen.yaml  the tiny CLIP's text tower, frozen (SD1 as shipped)
#   mlm    configs/prompt/sd1_unet_mlm_frozen.yaml   a masked language model of the prompts, frozen (Imagen's T5)
# each scored by evaluate.py at N images (sampling seed 0; the held-out prompts' hit rates and CLIP score, 20 images
# a prompt). Publishes docs/results/encoder_study.json (block "adherence over seeds") after every seed. Resumable: a
# trained checkpoint or a score on disk is not made again, nor, on a new clone, a row already published (RESTORE=0:
# measure them all again).
#   bash benchmarks/encoder_study.sh        (about 2.5 hours on 2 CPU cores)
#   IMAGES=640 N=20 PER_PROMPT=1 SEEDS=1 OUT=/tmp/enc PUBLISH= bash benchmarks/encoder_study.sh   a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/encoder_study}
IMAGES=${IMAGES:-60000}
N=${N:-1000}
PER_PROMPT=${PER_PROMPT:-20}
SEEDS=${SEEDS:-3}
PUBLISH=${PUBLISH-encoder_study}  # empty: list the scores, publish nothing
source benchmarks/lib.sh  # train_once, score_once, restore_published, missing, publish, PYTHON
declare -A CONFIG=([joint]=sd1_unet_crossattn [clip]=sd1_unet_clip_frozen [mlm]=sd1_unet_mlm_frozen)
declare -A LABEL=([joint]="text encoder trained with it" [clip]="CLIP text tower, frozen"
                  [mlm]="masked language model, frozen")
mkdir -p "$OUT"
labels=()  # LABEL=SCORES.json for every seed, in the published table's order
for seed in $(seq 0 $((SEEDS - 1))); do
  for kind in joint clip mlm; do
    labels+=("SD1 U-Net, ${LABEL[$kind]}, seed $seed=$OUT/seed$seed/${CONFIG[$kind]}.json")
  done
done
restore_published "$PUBLISH" "$N" "${labels[@]}"  # a new clone measures only what docs/results/ does not hold
for seed in $(seq 0 $((SEEDS - 1))); do
  dir=$OUT/seed$seed
  for kind in joint clip mlm; do
    name=${CONFIG[$kind]}
    scores=$dir/$name.json
    missing "$scores" || continue
    ckpt=$dir/$name/checkpoints/model_epoch_1.pt
    train_once "$kind, seed $seed" "$ckpt" "$dir.$name.train.log" --config "configs/prompt/$name.yaml" \
        training.output_dir="$dir" training.epochs=1 training.max_images="$IMAGES" training.seed="$seed"
    score_once "$kind, seed $seed" "$scores" --checkpoint "$ckpt" --n "$N" --adherence-per-prompt "$PER_PROMPT"
  done
  # published after every seed: the seeds done so far, so a study cut short keeps them (restored on a new clone)
  publish "$PUBLISH" "${labels[@]:0:$((3 * (seed + 1)))}"
done
