#!/usr/bin/env bash
# Sora on MNIST (issue 49, docs/video.md): the video DiT (configs/video/sora_moving_mnist.yaml) trained on IMAGES
# clips (135,000: 55 minutes on 2 CPU cores, inside the issue's budget of 60), then scored by evaluate.py on
# the first N held-out clips' prompts, text to video and image to video (each clip given its held-out clip's first
# frame, sampling.first_frame), and text to video at guidance 4 (the config's 1.5 is not tuned); the config as it
# was first written (lr 0.001, no QK-norm), scored text to video, the ablation that set the config's lr 0.008 and
# QK-norm; and, where FULL_IMAGES is set, full attention
# (configs/video/sora_full_attention.yaml, the same weights) trained on FULL_IMAGES clips, scored text to video.
# Publishes docs/results/video.json (the `clips` block of docs/video.md). Resumable: each run and score is kept and
# skipped when rerun.
#   bash benchmarks/video_study.sh       (about three hours on 2 CPU cores: two trainings, four scores)
#   FULL_IMAGES=106000 bash benchmarks/video_study.sh     adds full attention at the factorised run's training FLOPs
#       (benchmarks/video_attention.py: 2.43 GFLOP a clip against 1.91, so 135,000 x 1.91 / 2.43 clips)
#   IMAGES=64 N=8 OUT=/tmp/vs PUBLISH= bash benchmarks/video_study.sh    a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/video}
IMAGES=${IMAGES:-135000}
FULL_IMAGES=${FULL_IMAGES:-}
N=${N:-500}
PUBLISH=${PUBLISH-video}  # empty: list the scores, publish nothing
source benchmarks/lib.sh  # train_once, score_once, PYTHON
labels=()

# run NAME CONFIG DIR CLIPS train.py-overrides...: train CONFIG on CLIPS clips into DIR, once
run() {
  local name=$1 config=$2 dir=$3 clips=$4
  shift 4
  train_once "$name" "$dir/$config/checkpoints/last.pt" "$dir.train.log" --config "configs/video/$config.yaml" \
      training.output_dir="$dir" training.max_images="$clips" "$@"
}

dir=$OUT/lr0.008  # the config as it stands
ckpt=$dir/sora_moving_mnist/checkpoints/last.pt
run "the video DiT" sora_moving_mnist "$dir" "$IMAGES"
score_once "the video DiT, text to video" "$dir/t2v.json" --checkpoint "$ckpt" --n "$N"
score_once "the video DiT, image to video" "$dir/i2v.json" --checkpoint "$ckpt" --n "$N" --set sampling.first_frame=true
score_once "the video DiT, text to video, CFG 4" "$dir/t2v_cfg4.json" --checkpoint "$ckpt" --n "$N" \
    --set sampling.cfg_scale=4.0  # the config's 1.5 is not tuned: does stronger guidance draw the digit asked?
labels+=("text to video=$dir/t2v.json" "image to video=$dir/i2v.json" "text to video, CFG 4=$dir/t2v_cfg4.json")

if [ -n "$FULL_IMAGES" ]; then  # the attention ablation (docs/video.md section 3)
  dir=$OUT/full
  run "full attention" sora_full_attention "$dir" "$FULL_IMAGES"
  score_once "full attention, text to video" "$dir/t2v.json" --checkpoint "$dir/sora_full_attention/checkpoints/last.pt" \
      --n "$N"
  labels+=("full attention, text to video=$dir/t2v.json")
fi

dir=$OUT/lr0.001  # the learning-rate ablation: the config as first written
run "the video DiT at lr 0.001, no QK-norm" sora_moving_mnist "$dir" "$IMAGES" training.lr=0.001 model.qk_norm=false
score_once "lr 0.001, no QK-norm, text to video" "$dir/t2v.json" --checkpoint "$dir/sora_moving_mnist/checkpoints/last.pt" \
    --n "$N"
labels+=("lr 0.001, no QK-norm, text to video=$dir/t2v.json")
publish "$PUBLISH" "${labels[@]}"
