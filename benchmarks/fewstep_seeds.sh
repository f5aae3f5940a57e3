#!/usr/bin/env bash
# Three training seeds of the two best few-step students (issue 45; docs/fewstep.md, "Over training seeds"): the
# progressive distillation chains of the shipped SD3 (Euler, 4 -> 2 -> 1 calls) and SD2 (deterministic DDIM,
# 8 -> 4 -> 2 -> 1 calls), each trained with training.seed = 0, 1, 2 and scored at N images, sampling seed 0.
# Seed 0 is the published table's run (benchmarks/fewstep_shipped.sh); seed k trains into
# experiments/fewstep_shipped/seed<k>. Publishes docs/results/fewstep_seeds.json (the block "curves over seeds").
#   bash benchmarks/fewstep_seeds.sh     (about an hour of training per seed on 2 CPU cores; resumable)
#   ROUND_IMAGES=640 N=40 OUT=/tmp/fs SCORES=/tmp/fs/scores SEEDS=2 PUBLISH= bash benchmarks/fewstep_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-3}
PUBLISH=${PUBLISH-fewstep_seeds}  # empty: list the scores, publish nothing
PYTHON=${PYTHON:-python3}
labels=()
for seed in $(seq 0 $((SEEDS - 1))); do
  scored=$(SEED=$seed CHAINS=pd PUBLISH= bash benchmarks/fewstep_shipped.sh)  # a failed seed stops here
  # each line: "<model> @ <calls>=<evaluate.py output>"; the seed goes after the calls, where the table looks for it
  while IFS= read -r line; do
    labels+=("${line%=*}, seed $seed=${line##*=}")
  done <<< "$scored"
done
if [ -n "$PUBLISH" ]; then
  $PYTHON compare_models.py --evaluations "${labels[@]}" --as "$PUBLISH"
else
  printf '%s\n' "${labels[@]}"
fi
