#!/usr/bin/env bash
# The shipped demo student retrained on a lent GPU (issue 8's "a later run on a GPU replaces it"),
# sized for a 15-minute loan: bench/finetune_demo.py twice at once on the one GPU, each in a copy
# of the checkout of its own (its own work folder and database),
#   feature: distilled from the 200-epoch s-scale attention teacher (bench/results/weights),
#   none:    the same retraining with no teacher (what the teacher adds),
# each within HOURS of training (the epochs are re-planned after the first to end within it), so
# both end before the loan does; the two see the same GPU and the same contention. A method may
# name its image size, METHODS="feature feature@320": that run trains (and is evaluated) at 320 px,
# and its files are named feature_320.
#
#   bash bench/gpu_demo_retrain.sh start            (returns at once: the runs live in sessions
#                                                     of their own until the machine goes back)
#   bash bench/gpu_demo_retrain.sh wait 500 "$OUT"  (progress; brings back what is done; repeat)
#
# Carried with the call: .whl and .carry/neu-det.tar.gz, as for gpu_session.sh (bench/README.md).
# Tried on a CPU: WHEELS=0 HOURS=0.003 DEVICE=cpu BATCH=16 WORKERS=1 PY=$PWD/.venv/bin/python ...
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${GPU_WORK:-/tmp/gpu_demo_retrain}
PY=${PY:-python3}
HOURS=${HOURS:-0.15}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-6}
DEVICE=${DEVICE:-0}
IMGSZ=${IMGSZ:-256}
METHODS=${METHODS:-feature none}
TEACHER=bench/results/weights/defect-yolo-s-200e256.pt

start() {
    mkdir -p "$WORK/out"
    cd "$ROOT" || return 1
    source bench/gpu_common.sh
    prepare_device "$WORK/data" || return 1
    require_neu || return 1
    local spec method imgsz tag copy teacher_args
    for spec in $METHODS; do
        method=${spec%@*} imgsz=$IMGSZ tag=$spec
        [[ $spec == *@* ]] && imgsz=${spec#*@} tag=${method}_$imgsz
        copy=$WORK/$tag
        rm -rf "$copy" && mkdir -p "$copy" || return 1
        tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./bench/.work --exclude=./data \
            -cf - . | tar -xf - -C "$copy" || return 1
        teacher_args=(--teacher-weights "$TEACHER")
        [[ $method == none ]] && teacher_args=()
        (cd "$copy" && setsid nohup "$PY" bench/finetune_demo.py --method "$method" \
            "${teacher_args[@]}" --hours "$HOURS" --batch "$BATCH" --workers "$WORKERS" \
            --imgsz "$imgsz" --device "$DEVICE" --neu "$NEU" \
            --out "$WORK/out/finetune_demo_gpu_$tag.json" >"$WORK/out/$tag.log" 2>&1 &
            echo $! >"$WORK/out/$tag.pid")
    done
    echo "started: $METHODS, $HOURS h each, on device $DEVICE"
}

tags() {  # each run's name: its method, and its image size where METHODS names one
    local spec
    for spec in $METHODS; do echo "${spec/@/_}"; done
}

gather() {  # into $1: the result files, logs, each retrained student's weights and history
    local out=$1 method weights
    mkdir -p "$out"
    cp "$WORK"/out/*.json "$WORK"/out/*.log "$out/" 2>/dev/null
    for method in $(tags); do
        weights=$(ls -t "$WORK/$method"/bench/.work/finetune_demo/models/defect-yolo-n-*/best.pt 2>/dev/null | head -1)
        [[ -n $weights ]] && cp "$weights" "$out/student_$method.pt"
        local history
        history=$(ls -t "$WORK/$method"/bench/.work/finetune_demo/runs/detect/*/results.csv 2>/dev/null | head -1)
        [[ -n $history ]] && cp "$history" "$out/history_$method.csv"
    done
    return 0
}

wait_runs() {  # up to $1 seconds, until every method wrote its result; then gather into $2
    local limit=$1 out=$2 began=$SECONDS method done_all
    while ((SECONDS - began < limit)); do
        done_all=1
        for method in $(tags); do  # a run that ended without its result failed: no more to wait
            [[ -f $WORK/out/finetune_demo_gpu_$method.json ]] && continue
            kill -0 "$(cat "$WORK/out/$method.pid" 2>/dev/null)" 2>/dev/null && done_all=0
        done
        ((done_all)) && break
        sleep 10
    done
    for method in $(tags); do
        echo "--- $method"
        tail -c 1500 "$WORK/out/$method.log" 2>/dev/null | tr '\r' '\n' | tail -8
    done
    gather "$out"
}

case ${1:-} in
start) start ;;
wait) wait_runs "${2:-500}" "${3:-$WORK/out}" ;;
*) echo "usage: $0 start | wait SECONDS OUT" >&2; exit 2 ;;
esac
