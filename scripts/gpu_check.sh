#!/usr/bin/env bash
# The demo on GPUs: one GPU in fp32, one GPU in bf16-mixed with channels_last, and DDP on every
# visible GPU (same global batch as one GPU: batch_size per device = 32 / N). Prints each run's
# test scores and median seconds per training epoch of each stage, from its results.json and
# metrics.csv. Usage (from the repository root, after `make install`):
#     scripts/gpu_check.sh [data dir, default data/demo] [output dir, default runs/gpu_check]
set -euo pipefail
DATA=${1:-data/demo}
OUT=${2:-runs/gpu_check}
BIN=${BIN:-.venv/bin}
N=$(nvidia-smi -L | wc -l)
if [ "$N" -lt 1 ]; then echo "no GPU visible (nvidia-smi -L lists none)" >&2; exit 1; fi
[ -f "$DATA/train.csv" ] || "$BIN/mmdistill" demo-data demo "$DATA"

run() {  # name, then --set overrides
  local name=$1; shift
  "$BIN/mmdistill" run recipes/demo.yaml --set data.root="$DATA" --set output_dir="$OUT" \
    --set experiment_name="$name" --set logging.progress_bar=false --set training.accelerator=gpu --overwrite "$@" \
    > "$OUT/$name.log" 2>&1 || { echo "$name failed: see $OUT/$name.log" >&2; tail -5 "$OUT/$name.log" >&2; }
}
mkdir -p "$OUT"
run gpu1_fp32 --set training.devices=1
run gpu1_bf16_cl --set training.devices=1 --set training.precision=bf16-mixed --set training.channels_last=true
if [ "$N" -gt 1 ]; then
  B=$((32 / N))
  run "gpu${N}_ddp" --set training.devices="$N" --set training.strategy=ddp \
    --set training.teacher.batch_size=$B --set training.student.batch_size=$B
fi

"$BIN/python" - "$OUT" <<'PY'
import csv, json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'run':<16}{'teacher':>9}{'KD':>9}{'baseline':>10}   median s/epoch (teacher, student, baseline)")
for run in sorted(p for p in out.iterdir() if (p / "results.json").is_file()):
    r = json.loads((run / "results.json").read_text())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    per = [statistics.median(float(x["train_seconds"]) for x in rows if x["stage"] == s and x["train_seconds"])
           if any(x["stage"] == s for x in rows) else float("nan") for s in ("teacher", "student", "baseline")]
    scores = [r.get(k, {}).get("test", {}).get("score", float("nan")) for k in ("teacher", "student", "baseline")]
    print(f"{run.name:<16}" + "".join(f"{s:>9.4f}" for s in scores) + "   " + ", ".join(f"{p:.2f}" for p in per))
PY
