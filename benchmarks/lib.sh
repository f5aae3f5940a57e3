# Shared by the study scripts (source it): train a config once, score a checkpoint once, so a study that stopped
# resumes where it was. Each stops the script with the log's name when its command fails.
#   train_once WHAT CHECKPOINT LOG train.py-arguments...     trains (--overwrite) unless CHECKPOINT exists
#   score_once WHAT SCORES.json evaluate.py-arguments...     scores (--out SCORES.json) unless it exists
PYTHON=${PYTHON:-python3}

train_once() {
  local what=$1 ckpt=$2 log=$3
  shift 3
  [ -f "$ckpt" ] && return 0
  echo "$what: training (log: $log)"
  mkdir -p "$(dirname "$log")"
  $PYTHON train.py "$@" --overwrite > "$log" 2>&1 || { echo "$what: training failed, see $log"; exit 1; }
}

score_once() {
  local what=$1 scores=$2
  shift 2
  [ -s "$scores" ] && return 0
  echo "$what: scoring (log: $scores.log)"
  $PYTHON evaluate.py "$@" --out "$scores" > /dev/null 2> "$scores.log" \
    || { rm -f "$scores"; echo "$what: scoring failed, see $scores.log"; exit 1; }
}

# publish NAME LABEL=SCORES.json...: the scores as docs/results/NAME.json (compare_models.py --as NAME, which
# regenerates the blocks that name it), or, where NAME is empty, the labels and files listed for the caller
publish() {
  local name=$1
  shift
  if [ -n "$name" ]; then
    $PYTHON compare_models.py --evaluations "$@" --as "$name"
  else
    printf '%s\n' "$@"
  fi
}
