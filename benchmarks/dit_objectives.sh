#!/usr/bin/env bash
# Why the DiT drew blobs (docs/lab/dit.md): the same DiT trained one epoch (60,000 images) per row,
# changing only what the network predicts, then scored at N = 1000 with that objective's sampler.
# About 15 minutes a row on one core of a 2-core CPU (training ~8, scoring ~4-7).
#   bash benchmarks/dit_objectives.sh [ROW ...]     rows: eps_lr001 eps v flow flow_rope flow_p2 (default: all)
# The rows use 4x4 patches, except flow_p2: the config's own 2x2 patches (about 45 minutes: 25 training, 18 scoring).
#   IMAGES=640 N=20 bash benchmarks/dit_objectives.sh flow     a smoke test of the script (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/dit_objectives}
IMAGES=${IMAGES:-60000}
N=${N:-1000}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
CONFIG=configs/reference/dit_transformer.yaml
P4="model.patch_size=4"
EPS="$P4 diffusion.target=eps diffusion.schedule=scaled_linear diffusion.beta_start=0.00085 diffusion.beta_end=0.012
     diffusion.t_sampling=uniform_discrete sampling.sampler=ddim sampling.spacing=leading sampling.eta=1 sampling.clip_x0=true"
declare -A ROWS=(
  [eps_lr001]="$EPS training.lr=0.001 model.qk_norm=false sampling.cfg_scale=1.5"
  [eps]="$EPS sampling.cfg_scale=1.5"
  [v]="$EPS diffusion.target=v sampling.cfg_scale=1.25"
  [flow]="$P4"
  [flow_rope]="$P4 model.pos_embed=rope"
  [flow_p2]=""
)
rows=("$@"); [ ${#rows[@]} -eq 0 ] && rows=(eps_lr001 eps v flow flow_rope flow_p2)
for row in "${rows[@]}"; do
  [ -v "ROWS[$row]" ] || { echo "unknown row $row (rows: ${!ROWS[*]})" >&2; exit 2; }
  # shellcheck disable=SC2086
  $PYTHON train.py --config $CONFIG training.output_dir=$OUT/$row training.epochs=1 training.max_images=$IMAGES \
      training.threads=1 ${ROWS[$row]} --overwrite > "$OUT.$row.train.log" 2>&1 || { echo "$row: training failed, see $OUT.$row.train.log"; exit 1; }
  OMP_NUM_THREADS=1 $PYTHON evaluate.py --checkpoint $OUT/$row/dit_transformer/checkpoints/model_epoch_1.pt --n $N \
      2>/dev/null | $PYTHON -c "import json,sys; d=json.load(sys.stdin); print(f\"$row: FID {d['fid']:.2f} (floor {d['fid_floor']:.2f}), accuracy {100*d['accuracy']:.1f}%, {d['sampler']}, CFG {d['cfg_scale']}\")"
done
