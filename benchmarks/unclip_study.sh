#!/usr/bin/env bash
# DALL-E 2 against SD1 at equal parameters (issue 47, docs/encoders.md): for training seeds 0, 1, 2,
#   the unCLIP decoder (configs/unclip/decoder.yaml) and prior (configs/unclip/prior.yaml), 60,000 images each,
#   scored as a text-to-image model (the prior's embeddings drawn by the decoder; N images and the held-out
#   prompts' hit rates and CLIP score, as benchmarks/encoder_study.sh scores SD1), and the decoder alone, drawing
#   from real test digits' CLIP embeddings (how faithful its variations are);
#   the prompted SD1 U-Net of the same seed (the encoder study's "joint" run, trained here if it is missing).
# Then one probe of why the chain's digits vary so little (PROBE=0 skips it): seed 0's chain again with the prior
#   sampled without guidance (sampling.cfg_scale=1.0; the decoder unchanged), published as
#   docs/results/unclip_prior_guidance.json beside the same seed's chain as configured.
# Publishes docs/results/unclip_study.json (SD1 and unCLIP side by side, "adherence over seeds") and
# docs/results/unclip_decoder.json (the decoder alone), after every seed. Resumable, and on a new clone it measures only
# the rows those files lack (RESTORE=0: measure them all again).
#   bash benchmarks/unclip_study.sh        (about 2.5 hours on 2 CPU cores, more if SD1 is not trained yet)
#   IMAGES=640 N=20 PER_PROMPT=1 SEEDS=1 OUT=/tmp/unclip ENCODER_STUDY=/tmp/unclip PUBLISH= bash benchmarks/unclip_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/unclip_study}
ENCODER_STUDY=${ENCODER_STUDY:-experiments/encoder_study}  # where SD1's prompted runs are (encoder_study.sh)
IMAGES=${IMAGES:-60000}
N=${N:-1000}
PER_PROMPT=${PER_PROMPT:-20}
SEEDS=${SEEDS:-3}
PROBE=${PROBE:-1}
PUBLISH=${PUBLISH-unclip_study}  # empty: list the scores, publish nothing
source benchmarks/lib.sh  # train_once, score_once, restore_published, missing, publish, PYTHON
# train_unclip SEED decoder|prior: that seed's stage on IMAGES images (train_once: kept if its checkpoint exists)
train_unclip() {
  train_once "unCLIP $2, seed $1" "$OUT/seed$1/$2/checkpoints/model_epoch_1.pt" "$OUT/seed$1.$2.train.log" \
      --config "configs/unclip/$2.yaml" training.output_dir="$OUT/seed$1" \
      training.epochs=1 training.max_images="$IMAGES" training.seed="$1"
}
chained=() decoders=()  # LABEL=SCORES.json for every seed, in the published tables' order
for seed in $(seq 0 $((SEEDS - 1))); do
  chained+=("SD1 U-Net reading the prompt, seed $seed=$ENCODER_STUDY/seed$seed/sd1_unet_crossattn.json"
            "unCLIP: prior, then decoder, seed $seed=$OUT/seed$seed/unclip.json")
  decoders+=("unCLIP decoder from a real test digit's CLIP embedding, seed $seed=$OUT/seed$seed/decoder.json")
done
restore_published "$PUBLISH" "$N" "${chained[@]}"  # a new clone measures only what docs/results/ does not hold
restore_published "${PUBLISH:+unclip_decoder}" "$N" "${decoders[@]}"
sd1_published=()  # SD1's rows are the encoder study's "joint" runs: a new clone restores them from its table too
for seed in $(seq 0 $((SEEDS - 1))); do
  sd1_published+=("SD1 U-Net, text encoder trained with it, seed $seed=$ENCODER_STUDY/seed$seed/sd1_unet_crossattn.json")
done
restore_published "${PUBLISH:+encoder_study}" "$N" "${sd1_published[@]}"
for seed in $(seq 0 $((SEEDS - 1))); do
  run=(training.epochs=1 training.max_images="$IMAGES" training.seed="$seed")
  sd1_scores=$ENCODER_STUDY/seed$seed/sd1_unet_crossattn.json
  if missing "$sd1_scores"; then
    sd1=$ENCODER_STUDY/seed$seed/sd1_unet_crossattn/checkpoints/model_epoch_1.pt
    train_once "SD1, seed $seed" "$sd1" "$ENCODER_STUDY/seed$seed.sd1_unet_crossattn.train.log" \
        --config configs/prompt/sd1_unet_crossattn.yaml training.output_dir="$ENCODER_STUDY/seed$seed" "${run[@]}"
    score_once "SD1, seed $seed" "$sd1_scores" --checkpoint "$sd1" --n "$N" --adherence-per-prompt "$PER_PROMPT"
  fi
  dir=$OUT/seed$seed
  decoder=$dir/decoder/checkpoints/model_epoch_1.pt
  if missing "$dir/decoder.json" "$dir/unclip.json"; then
    train_unclip "$seed" decoder
    score_once "unCLIP decoder alone, seed $seed" "$dir/decoder.json" --checkpoint "$decoder" --n "$N"
  fi
  if missing "$dir/unclip.json"; then
    train_unclip "$seed" prior
    score_once "unCLIP, seed $seed" "$dir/unclip.json" --checkpoint "$dir/prior/checkpoints/model_epoch_1.pt" \
        --set sampling.decoder="$decoder" --n "$N" --adherence-per-prompt "$PER_PROMPT"
  fi
  # published after every seed: the seeds done so far, so a study cut short keeps them (restored on a new clone)
  publish "$PUBLISH" "${chained[@]:0:$((2 * (seed + 1)))}"
  publish "${PUBLISH:+unclip_decoder}" "${decoders[@]:0:$((seed + 1))}"
done
if [ "$PROBE" = 1 ]; then  # does guiding the prior cost the chain its variety? (docs/encoders.md section 6)
  probe=("unCLIP, prior guided at 1.5 (as configured), seed 0=$OUT/seed0/unclip.json"
         "unCLIP, prior not guided (cfg 1.0), seed 0=$OUT/seed0/unclip_prior_cfg1.json")
  restore_published "${PUBLISH:+unclip_prior_guidance}" "$N" "${probe[@]}"
  if missing "$OUT/seed0/unclip_prior_cfg1.json"; then  # a new clone restored seed 0's scores: train its models again
    train_unclip 0 decoder
    train_unclip 0 prior
    decoder=$OUT/seed0/decoder/checkpoints/model_epoch_1.pt prior=$OUT/seed0/prior/checkpoints/model_epoch_1.pt
    score_once "unCLIP, prior not guided, seed 0" "$OUT/seed0/unclip_prior_cfg1.json" --checkpoint "$prior" \
        --set sampling.cfg_scale=1.0 --set sampling.decoder="$decoder" --n "$N" --adherence-per-prompt "$PER_PROMPT"
  fi
  publish "${PUBLISH:+unclip_prior_guidance}" "${probe[@]}"
fi
