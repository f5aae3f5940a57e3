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

# restore_published NAME N LABEL=SCORES.json...: on a machine without a study's files (a new clone), each missing
# SCORES.json whose LABEL is a row of docs/results/NAME.json scored at N samples is written back from that row, so
# score_once skips it and the study trains and scores only what was never published (the row came from the same
# command; a study run at another N, or publishing nothing, restores nothing; RESTORE=0 measures every row again).
restore_published() {
  local name=$1 n=$2
  shift 2
  [ "${RESTORE:-1}" != 0 ] && [ -n "$name" ] && [ -f "docs/results/$name.json" ] || return 0
  $PYTHON - "docs/results/$name.json" "$n" "$@" <<'PY'
import json, pathlib, sys
rows = {row["label"]: row for row in json.loads(pathlib.Path(sys.argv[1]).read_text()).get("rows", [])
        if row.get("n") == int(sys.argv[2])}
for pair in sys.argv[3:]:
    label, _, path = pair.partition("=")
    out = pathlib.Path(path)
    if label in rows and not (out.exists() and out.stat().st_size):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({k: v for k, v in rows[label].items() if k != "label"}, indent=2))
        print(f"{label}: restored from {sys.argv[1]} (delete {out} to measure it again)")
PY
}

# missing FILE...: true when any FILE is missing or empty (a model is trained only if a score still needs it)
missing() {
  local f
  for f in "$@"; do [ -s "$f" ] || return 0; done
  return 1
}
