#!/usr/bin/env bash
# `defects batch --workers N` on a lent GPU, as a user runs it: a fresh database, the demo model
# installed, PARTS unique copies of the NEU-DET test images in a folder, then the command with
# WORKERS worker processes, and the same command again (a resumed run must skip every part).
# The log is what a user sees; it lands in $1 (default bench/results) as batch_cli_gpu.txt
# (batch_cli_cpu.txt where DEVICE is cpu).
#
#   bash bench/gpu_batch_cli.sh "$OUT"          (carry .whl and .carry, as gpu_session.sh)
#   PARTS=100000 DEALING=1 bash bench/gpu_batch_cli.sh "$OUT"   (also the dealer alone: ~5 min)
#   PARTS=40000 CHUNKS="1 4 1 4" bash bench/gpu_batch_cli.sh "$OUT"  (also batches per chunk)
#   PROFILE=1 ... (also the first pass again, every process sampled by py-spy)
# Tried on a CPU with: WHEELS=0 DEVICE=cpu PARTS=200 WORKERS=2 bash bench/gpu_batch_cli.sh /tmp/x
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${1:-$ROOT/bench/results}
PY=${PYTHON:-python3}
PARTS=${PARTS:-40000}
WORKERS=${WORKERS:-8}
DEVICE=${DEVICE:-cuda:0}
WORK=${GPU_WORK:-/tmp/gpu_batch_cli}
cd "$ROOT" || exit 1
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT_DIR"

source "$ROOT/bench/gpu_common.sh"
prepare_device "$WORK" || exit 1
kind=gpu
[[ $DEVICE == cpu ]] && kind=cpu  # batch_cli_<kind>.txt, dealing_<kind>.json
export DEFECTS_DATA_DIR=$WORK/data PYTHONUNBUFFERED=1 COLUMNS=200

defects() {  # the installed `defects` command, where the project is not pip-installed
    "$PY" -c 'import sys; from training.cli import main; sys.argv[0] = "defects"; main()' "$@"
}

{
    echo "# defects batch --workers $WORKERS on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "$DEVICE"), $(nproc) cores, $(date -u +%F)"
    defects db upgrade >/dev/null && defects models install-demo || exit 1
    "$PY" - "$NEU" "$PARTS" "$WORK/parts" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "bench")
from inference import make_parts  # the benchmark's unique copies of the test images

neu, count, folder = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
names = (neu / "splits" / "test.txt").read_text().split()
images = [neu / "images" / name for name in names]
make_parts(images, count, folder)
print(f"{count} parts in a folder, copies of the {len(images)} NEU-DET test images")
EOF
    for pass in first again; do
        echo "## $pass: defects batch PARTS --line demo --station gpu --workers $WORKERS --device $DEVICE"
        began=$(date +%s%N)
        defects batch "$WORK/parts" --line demo --station gpu --workers "$WORKERS" \
            --device "$DEVICE" 2>&1 | tr '\r' '\n' | grep -v "part/s\]$" | grep -v "^\s*$"
        echo "wall time of the command, interpreter start included: $((($(date +%s%N) - began) / 1000000)) ms"
    done
} 2>&1 | tee "$OUT_DIR/batch_cli_$kind.txt"

# With PROFILE=1, then the first pass again on a fresh database under py-spy (carried in .whl),
# every process sampled: the log and a summary by process into profile_<kind>.txt and .md
# (bench/profile_summary.py; the raw samples, tens of MB, stay on the machine).
if [[ ${PROFILE:-0} == 1 ]]; then
    spy=$(command -v py-spy || echo /tmp/site/bin/py-spy)
    export DEFECTS_DATA_DIR=$WORK/profiled
    defects db upgrade >/dev/null && defects models install-demo >/dev/null || exit 1
    "$spy" record --subprocesses --rate 100 --format raw --output "$WORK/profile.raw" -- \
        "$PY" -c 'import sys; from training.cli import main; sys.argv[0] = "defects"; main()' \
        batch "$WORK/parts" --line demo --station gpu --workers "$WORKERS" --device "$DEVICE" \
        2>&1 | tr '\r' '\n' | grep -v "part/s\]$" | grep -v "^\s*$" >"$OUT_DIR/profile_$kind.txt"
    tail -4 "$OUT_DIR/profile_$kind.txt"
    "$PY" bench/profile_summary.py "$WORK/profile.raw" --out "$OUT_DIR/profile_$kind.md" >/dev/null
fi

# With CHUNKS (say "1 4 1 4"), then the same command on CHUNK_PARTS other parts with each
# DEFECTS_CHUNK_BATCHES in turn, in one process and in WORKERS workers, each on a fresh database
# (the engine's batches per transaction: on a GPU, one batch of 64 is a whole chunk unless more
# are asked for), into batch_chunks_<kind>.txt and .json (bench/chunk_log.py, after every run).
if [[ -n ${CHUNKS:-} ]]; then
    {
        echo "# defects batch by DEFECTS_CHUNK_BATCHES, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "$DEVICE"), $(nproc) cores, $(date -u +%F)"
        "$PY" - "$NEU" "${CHUNK_PARTS:-20000}" "$WORK/chunk-parts" <<'EOF2'
import sys
from pathlib import Path

sys.path.insert(0, "bench")
from inference import make_parts

neu, count, folder = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
names = (neu / "splits" / "test.txt").read_text().split()
make_parts([neu / "images" / name for name in names], count, folder)
EOF2
        for chunk in $CHUNKS; do
            for workers in 1 "$WORKERS"; do
                export DEFECTS_DATA_DIR=$WORK/chunks-$chunk-$workers DEFECTS_CHUNK_BATCHES=$chunk
                rm -rf "$DEFECTS_DATA_DIR"
                defects db upgrade >/dev/null && defects models install-demo >/dev/null || exit 1
                echo "## chunk_batches $chunk, workers $workers"
                defects batch "$WORK/chunk-parts" --line demo --station gpu --workers "$workers" \
                    --device "$DEVICE" 2>&1 | tr '\r' '\n' | grep -v "part/s\]$" | grep -v "^\s*$"
                sleep 1  # (tee has written the run's lines)
                "$PY" bench/chunk_log.py "$OUT_DIR/batch_chunks_$kind.txt" >/dev/null
            done
        done
    } 2>&1 | tee "$OUT_DIR/batch_chunks_$kind.txt"
    "$PY" bench/chunk_log.py "$OUT_DIR/batch_chunks_$kind.txt"
fi

# With DEALING=1, then the dealer alone (bench/dealing.py: one message per part against 16) with
# the same workers, into dealing_gpu.json (dealing_cpu.json where DEVICE is cpu).
if [[ ${DEALING:-0} == 1 ]]; then
    "$PY" bench/dealing.py --neu "$NEU" --workers "$WORKERS" --parts "${DEALING_PARTS:-40000}" \
        --device "$DEVICE" --out "$OUT_DIR/dealing_$kind.json" 2>&1 | grep -v Warning | tail -8
fi
