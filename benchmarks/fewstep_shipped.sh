#!/usr/bin/env bash
# Few-step models from the shipped teachers (issue 45; docs/fewstep.md, "From the shipped teachers"): nothing to
# train first. Trains ECT from the shipped SD2 (2 epochs); progressive distillation of the shipped SD3 (8 -> 4 -> 2
# -> 1 Euler steps) and of the shipped SD2 (16 -> 8 -> 4 -> 2 -> 1 deterministic DDIM steps), ROUND_IMAGES a round;
# and MeanFlow from scratch (MF_IMAGES). Then it scores every teacher and student at 1, 2, 4 and 8 network calls
# (evaluate.py, N images, seed 0; the teachers and ECT at 2 calls on their tuned midpoints, each distilled round at
# its own steps, MeanFlow in equal jumps, as its network is told) and publishes the table:
#   bash benchmarks/fewstep_shipped.sh              (about two hours on 2 CPU cores; resumable: run it again)
#   ROUND_IMAGES=640 ECT_IMAGES=640 MF_IMAGES=640 N=40 OUT=/tmp/fs SCORES=/tmp/fs/scores PUBLISH= \
#     bash benchmarks/fewstep_shipped.sh                                                       a smoke test
#   SEED=1 CHAINS=pd bash benchmarks/fewstep_shipped.sh   training seed 1 of the two distillation chains only, into
#     $OUT/seed1 and $SCORES/seed1 (benchmarks/fewstep_seeds.sh runs seeds 1 and 2 and publishes the spread)
# The midpoints were tuned with benchmarks/midpoint_sweep.py on seed 1 (N = 500), never on the reported seed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/fewstep_shipped}
SCORES=${SCORES:-results/fewstep_shipped}
SEED=${SEED:-0}        # every student's training.seed (data order, noise); seed k > 0 trains and scores in seed<k>/
CHAINS=${CHAINS:-all}  # all: every row; pd: the two progressive distillation chains only (the seeds' check)
if [ "$SEED" != 0 ]; then OUT=$OUT/seed$SEED; SCORES=$SCORES/seed$SEED; fi
case $CHAINS in all|pd) ;; *) echo "CHAINS must be all or pd, not '$CHAINS'" >&2; exit 2 ;; esac
N=${N:-1000}
ECT_IMAGES=${ECT_IMAGES:-120000}
ROUND_IMAGES=${ROUND_IMAGES:-20000}
MF_IMAGES=${MF_IMAGES:-60000}
SD2_MID=${SD2_MID:-0.4}
SD3_MID=${SD3_MID:-0.5}
ECT_MID=${ECT_MID:-0.5}
PUBLISH=${PUBLISH-fewstep_shipped}  # empty: list the scores, publish nothing
if [ "$SEED" != 0 ] || [ "$CHAINS" != all ]; then PUBLISH=; fi  # the published table is seed 0's, every row
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT" "$SCORES"

train() {  # name config overrides...: train once; a run that stopped is resumed
  local name=$1 config=$2; shift 2
  local last=$OUT/$name/$(basename "$config" .yaml)/checkpoints/last.pt resume=
  [ -f "$OUT/$name/done" ] && return 0
  [ -f "$last" ] && resume=--resume
  $PYTHON train.py --config "$config" training.output_dir="$OUT/$name" training.seed="$SEED" "$@" $resume \
    > "$OUT/$name.train.log" 2>&1 \
    || { echo "$name: training failed, see $OUT/$name.train.log" >&2; exit 1; }
  touch "$OUT/$name/done"
}

[ "$CHAINS" = all ] && train ect configs/fewstep/sd2_ect.yaml training.max_images="$ECT_IMAGES" training.threads=2
train pd4 configs/fewstep/sd3_progressive.yaml training.max_images="$ROUND_IMAGES" training.threads=2
train pd2 configs/fewstep/sd3_progressive.yaml training.max_images="$ROUND_IMAGES" training.threads=2 fewstep.steps=2 \
  fewstep.teacher="$OUT/pd4/sd3_progressive/checkpoints/last.pt" fewstep.teacher_cfg_scale=1.0 sampling.steps=2
train pd1 configs/fewstep/sd3_progressive.yaml training.max_images="$ROUND_IMAGES" training.threads=2 fewstep.steps=1 \
  fewstep.teacher="$OUT/pd2/sd3_progressive/checkpoints/last.pt" fewstep.teacher_cfg_scale=1.0 sampling.steps=1
SD2_PD=configs/fewstep/sd2_progressive.yaml
train sd2_pd8 $SD2_PD training.max_images="$ROUND_IMAGES" training.threads=2
for s in 4 2 1; do
  train sd2_pd$s $SD2_PD training.max_images="$ROUND_IMAGES" training.threads=2 fewstep.steps=$s sampling.steps=$s \
    fewstep.teacher="$OUT/sd2_pd$((s * 2))/sd2_progressive/checkpoints/last.pt" fewstep.teacher_cfg_scale=1.0
done
[ "$CHAINS" = all ] && train meanflow configs/fewstep/sd3_meanflow.yaml training.max_images="$MF_IMAGES" \
  training.threads=2 training.epochs=$(( (MF_IMAGES + 59999) / 60000 ))

labels=()
score() {  # label steps checkpoint [evaluate.py options...]: one point of a curve, kept if scored already
  local label=$1 steps=$2 ckpt=$3; shift 3
  local file=$SCORES/$(echo "$label" | tr -c 'A-Za-z0-9' _)_$steps.json
  [ -s "$file" ] || $PYTHON evaluate.py --checkpoint "$ckpt" --n "$N" --steps "$steps" "$@" --out "$file" \
    > /dev/null 2> "$file.log" || { echo "$label @ $steps: evaluation failed, see $file.log" >&2; exit 1; }
  labels+=("$label @ $steps=$file")
}

SD2_T="SD2 U-Net v teacher, DDIM on a trailing grid (60,000 images)"
SD3_T="SD3 MMDiT flow teacher, Euler (60,000 images)"
ECT="SD2 ECT student, consistency sampling (60,000 + 120,000 images)"
PD="SD3 progressive distillation, Euler, CFG 1.5 distilled in (60,000 + 20,000 per round: NFE 4, 2, 1 = rounds 1, 2, 3)"
SD2_PDL="SD2 progressive distillation, deterministic DDIM, CFG 2.0 distilled in (60,000 + 20,000 per round: NFE 8, 4, 2, 1 = rounds 1-4)"
MF="SD3 MeanFlow from scratch, guidance trained in, equal jumps ($(echo "$MF_IMAGES" | sed -e ':a' -e 's/\B[0-9]\{3\}\>/,&/' -e 'ta') images)"
if [ "$CHAINS" = all ]; then
  for s in 1 2 4 8; do
    mid=(); [ $s = 2 ] && mid=(--set sampling.midpoint=$SD2_MID)
    score "$SD2_T" $s sd2 --set sampling.spacing=trailing "${mid[@]}"
  done
  for s in 1 2 4 8; do
    mid=(); [ $s = 2 ] && mid=(--set sampling.midpoint=$SD3_MID)
    score "$SD3_T" $s sd3 "${mid[@]}"
  done
  for s in 1 2 4 8; do
    mid=(); [ $s = 2 ] && mid=(--set sampling.midpoint=$ECT_MID)
    score "$ECT" $s "$OUT/ect/sd2_ect/checkpoints/last.pt" "${mid[@]}"
  done
fi
score "$PD" 4 "$OUT/pd4/sd3_progressive/checkpoints/last.pt"
score "$PD" 2 "$OUT/pd2/sd3_progressive/checkpoints/last.pt"
score "$PD" 1 "$OUT/pd1/sd3_progressive/checkpoints/last.pt"
for s in 8 4 2 1; do
  score "$SD2_PDL" $s "$OUT/sd2_pd$s/sd2_progressive/checkpoints/last.pt"
done
if [ "$CHAINS" = all ]; then
  for s in 1 2 4 8; do
    score "$MF" $s "$OUT/meanflow/sd3_meanflow/checkpoints/last.pt"
  done
fi
if [ -n "$PUBLISH" ]; then
  $PYTHON compare_models.py --evaluations "${labels[@]}" --as "$PUBLISH"
else  # a smoke test: what would be published
  printf '%s\n' "${labels[@]}"
fi
