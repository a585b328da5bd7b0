#!/usr/bin/env bash
# Everything a lent GPU is for, as one background pipeline, so that a session's 30 minutes of GPU
# time go to training and measuring rather than to starting machines:
#
#   1. the GPU half of the inference benchmark on the shipped demo model (inference_gpu.json),
#      decoding in threads and in worker processes, with the network-free ceiling of each;
#   2. the s-scale attention teacher on NEU-DET, full schedule (its wall time is issue 8's
#      "100 epochs of the teacher"), evaluated into detector_neu.json beside the CPU runs;
#   3. the n-scale student alone and distilled from that teacher with each of METHODS
#      (ultralytics' feature loss, our CWD) into distill_neu_gpu.json;
#   4. with TWIN=1, the s-scale plain twin of the teacher (attention against none);
#   5. everything that must come back (result files, the best distilled student) in one folder.
#
# PLAN picks the steps: "neu" (1 to 4, the default), "inference" (1 alone, with one and two
# batches in flight on the GPU and with 4 and 8 worker processes: about 5 minutes),
# "inference-workers" (only the largest batch in one process against 4 and 8 worker processes,
# with and without the network, into inference_gpu_workers.json: WORKERS_PARTS parts, 40000 by
# default, since 8000 leave the workers' start-up most of the run; about 4 minutes),
# "neu-twins" (only the s-scale attention model and its plain twin, same schedule, then their
# evaluation: issue 3's comparison within a 15-minute loan, about 9.5 minutes of training on an
# H100 at 100 epochs and 256 px; VARIANTS; PARALLEL=1 trains them side by side, untried on a
# GPU), "deeppcb" (the DeepPCB part verdicts of
# bench/classifier_verdict.py at full resolution, into classifier_verdict_gpu.json), "tiled"
# (bench/tiled_throughput.py on the GPU, into tiled_throughput_gpu.json: under a minute), or both;
# "pcb-detector" trains only the DeepPCB detector, inside a copy of the bench's own work database
# (packed with `pack-pcb-detector`: the imported train and val images, about 83 MB), within
# PCB_HOURS, and brings back that database, the weights and the run's history, so that a
# 15-minute GPU loan goes to training alone and the verifier and the scoring run on a CPU.
# DeepPCB (125 MB) is more than one call may carry: `pack-deeppcb` cuts it into pieces under
# .carry-pcb1, .carry-pcb2, ... here, each call carries one of them, and the pipeline's DeepPCB
# step waits until every piece has come.
#
# A device call may run 10 minutes, but a process started in a session of its own lives until
# the machine goes back, so:   bash bench/gpu_session.sh start   (returns at once)
#                              bash bench/gpu_session.sh wait 540 "$OUT"  (progress, results; repeat)
# Carried with the call: .whl (the packages the device image lacks, see bench/README.md) and
# .carry/neu-det.tar.gz (the dataset; ../shared does not travel). Without them it runs on what the
# machine has and on ../shared/datasets/neu-det, which is how it is tried on a CPU:
#   WHEELS=0 EPOCHS=1 IMGSZ=64 DEVICE=cpu PARTS=64 PYTHON=$PWD/.venv/bin/python bash bench/gpu_session.sh start
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Outside the checkout: each device call copies the working tree over the checkout again, which
# would overwrite result files the pipeline has written there. The pipeline runs in a copy.
WORK=${GPU_WORK:-/tmp/gpu_session}
COPY=$WORK/repo
LOG=$WORK/pipeline.log
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-100}
IMGSZ=${IMGSZ:-256}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-8}
DEVICE=${DEVICE:-0}
PARTS=${PARTS:-8000}
METHODS=${METHODS:-cwd feature}
TWIN=${TWIN:-0}
VARIANTS=${VARIANTS:-attention plain}  # neu-twins: any of attention, plain, gated
PARALLEL=${PARALLEL:-0}  # neu-twins: 1 trains the variants side by side on the one GPU
SEED=${SEED:-0}  # neu-twins: another seed is another run (-seedN): the spread between seeds
PLAN=${PLAN:-neu}
PCB_DETECTOR=${PCB_DETECTOR:-defect-yolo-s}
PCB_EPOCHS=${PCB_EPOCHS:-100}
PCB_IMGSZ=${PCB_IMGSZ:-640}
PCB_BATCH=${PCB_BATCH:-32}
PCB_CLASSIFIER=${PCB_CLASSIFIER:-resnet18}
PCB_CLASSIFIER_EPOCHS=${PCB_CLASSIFIER_EPOCHS:-30}
PCB_CLASSIFIER_IMGSZ=${PCB_CLASSIFIER_IMGSZ:-320}
PCB_FRACTION=${PCB_FRACTION:-1.0}  # of the training images; less only to try the plan quickly
PCB_HOURS=${PCB_HOURS:-}  # a wall-time budget for the pcb-detector plan's training (--hours)
PCB_WAIT=${PCB_WAIT:-900}  # seconds the DeepPCB step waits for its last piece
PCB_PIECE=${PCB_PIECE:-35m}  # with .whl (10 MiB) and the checkout (16 MiB) under the 64 MiB a call carries
mkdir -p "$WORK/out"

source "$ROOT/bench/gpu_common.sh"

prepare() {
    prepare_device "$WORK/data"
}

overrides() {  # a watching call may change the schedule of the steps still to come (EPOCHS, PARTS...)
    [[ -f $WORK/override.sh ]] && source "$WORK/override.sh"
    device_args=(--device "$DEVICE" --batch "$BATCH" --workers "$WORKERS" --imgsz "$IMGSZ")
    parallel_args=()
    [[ $PARALLEL == 1 ]] && parallel_args=(--parallel)
    return 0
}

gather() {  # what must come back, as far as it exists: collect may be called at any time
    cp bench/results/detector_neu.json bench/results/detector_neu.md bench/results/distill_neu_gpu.json \
        bench/results/inference_gpu.json bench/results/inference_gpu.md \
        bench/results/inference_gpu_workers.json bench/results/inference_gpu_workers.md \
        bench/results/classifier_verdict_gpu.json bench/results/classifier_verdict_gpu.md \
        bench/results/tiled_throughput_gpu.json "$WORK/out/" 2>/dev/null
    local best  # neu-twins: each version's weights, named by it (a later teacher; a run keeps none)
    for best in bench/.work/detector_neu/models/*/best.pt; do
        [[ -f $best ]] && cp "$best" "$WORK/out/$(basename "$(dirname "$best")").pt"
    done
    return 0
}

take_pieces() {  # DeepPCB pieces carried by this call, moved out before the next call replaces them
    mkdir -p "$WORK/pcb-pieces"
    local dir
    for dir in "$ROOT"/.carry-pcb*/; do
        [[ -f $dir/pieces ]] || continue
        cp "$dir/pieces" "$WORK/pcb-pieces/pieces"
        mv "$dir"/deeppcb.tar.* "$WORK/pcb-pieces/" 2>/dev/null
    done
    return 0
}

unpack_pieces() {  # the carried pieces, once all have come, unpacked under $WORK/data
    local pieces="$WORK/pcb-pieces" waited=0
    [[ -f $pieces/pieces ]] || return 1
    while (($(compgen -G "$pieces/deeppcb.tar.*" | wc -l) < $(cat "$pieces/pieces"))); do
        ((waited >= PCB_WAIT)) && { echo "DeepPCB pieces missing after $waited s" >&2; return 1; }
        sleep 10
        waited=$((waited + 10))
    done
    mkdir -p "$WORK/data" && cat "$pieces"/deeppcb.tar.* | tar -x -C "$WORK/data"
}

deeppcb_root() {  # the carried pieces once all have come, else $DEEPPCB
    if [[ ! -f $WORK/pcb-pieces/pieces ]]; then
        echo "${DEEPPCB:-}"  # PCBData of an unpacked copy, for a try on a CPU
        return 0
    fi
    unpack_pieces >&2 || return 1
    echo "$WORK/data/deeppcb/PCBData"
}

deeppcb() {
    local root
    root=$(deeppcb_root) && [[ -n $root ]] || { echo "no DeepPCB data" >&2; return 1; }
    "$PY" bench/classifier_verdict.py --deeppcb "$root" --detector "$PCB_DETECTOR" \
        --epochs "$PCB_EPOCHS" --imgsz "$PCB_IMGSZ" --batch "$PCB_BATCH" --workers "$WORKERS" \
        --classifier "$PCB_CLASSIFIER" --classifier-epochs "$PCB_CLASSIFIER_EPOCHS" \
        --classifier-imgsz "$PCB_CLASSIFIER_IMGSZ" --device "$DEVICE" --fraction "$PCB_FRACTION" \
        --hard-negatives \
        --out bench/results/classifier_verdict_gpu.json || return 1
    local detector
    detector=$(ls -t bench/.work/classifier_verdict/models/"$PCB_DETECTOR"-*/best.pt 2>/dev/null | head -1)
    [[ -n $detector ]] && cp "$detector" "$WORK/out/deeppcb_detector.pt"
    return 0
}

pcb_detector() {  # only the detector, into the bench's own database; scored on a CPU afterwards
    unpack_pieces || { echo "no DeepPCB training data" >&2; return 1; }
    local work=$WORK/data/classifier_verdict origin run version
    origin=$(cat "$work/.origin")  # where the database's paths point: the packing checkout's
    [[ -e $origin ]] && { echo "$origin exists here: not replaced" >&2; return 1; }
    mkdir -p "$(dirname "$origin")" && ln -s "$work" "$origin" || return 1
    # shellcheck disable=SC2086  # PCB_HOURS: an optional option
    DEFECTS_DATA_DIR=$origin "$PY" -c 'import sys; from training.cli import main; sys.argv[0] = "defects"; main()' \
        train detector --data deeppcb --model "$PCB_DETECTOR" --imgsz "$PCB_IMGSZ" \
        --batch "$PCB_BATCH" --workers "$WORKERS" --device "$DEVICE" --epochs "$PCB_EPOCHS" \
        ${PCB_HOURS:+--hours $PCB_HOURS} || return 1
    run=$(ls -td "$work"/runs/detect/deeppcb-* | head -1)
    version=$(ls -td "$work"/models/*/ | head -1)  # the version it registered: a run keeps no weights
    mkdir -p "$WORK/out/pcb_detector" && cp "$work/defects.db" "$version/best.pt" \
        "$run/results.csv" "$run/args.yaml" "$WORK/out/pcb_detector/"
    basename "$run" >"$WORK/out/pcb_detector/run_name"
}

step() {  # a failed step is logged and the pipeline goes on to the next one
    local name=$1
    shift
    echo "=== $(date -u +%FT%TZ) $name: $*"
    local began=$SECONDS
    "$@"
    local rc=$?
    echo "=== $(date -u +%FT%TZ) $name ended rc=$rc after $((SECONDS - began)) s"
    echo "$name rc=$rc seconds=$((SECONDS - began))" >>"$WORK/out/steps.txt"
    gather
}

teacher_weights() {
    ls -t bench/.work/detector_neu/models/defect-yolo-s-*/best.pt 2>/dev/null | head -1
}

student_weights() {  # the distilled student with the best test mAP50
    "$PY" -c "
import json, sys
results = json.load(open(sys.argv[1]))['results']
students = [v for k, v in results.items() if k.startswith('student_distilled') and isinstance(v, dict)]
print(max(students, key=lambda v: v['map50'])['weights'])" bench/results/distill_neu_gpu.json
}

inference_step() {  # the GPU half of the inference bench: issue 4
    local inference_device=$1
    shift
    local backends=("$@")
    overrides
    step inference "$PY" bench/inference.py --weights models/neu-det-demo/weights.pt --neu "$NEU" \
        --parts "$PARTS" --device "$inference_device" --batch "$BATCH" --engine-batches 1 16 "$BATCH" \
        --backends "${backends[@]}" --prepare-processes 0 8 --ceiling --skip-ultralytics-single \
        --one-at-a-time 1000 --gpu-streams 1 2 --workers 1 4 8 --bare-seconds 3 \
        --out bench/results/inference_gpu.json
}

workers_step() {  # issue 4's throughput target alone: one process against 4 and 8 workers
    local inference_device=$1
    overrides
    step inference-workers "$PY" bench/inference.py --weights models/neu-det-demo/weights.pt \
        --neu "$NEU" --parts "${WORKERS_PARTS:-40000}" --device "$inference_device" --batch "$BATCH" \
        --engine-batches "$BATCH" --backends pytorch --workers 1 4 8 --ceiling \
        --skip-ultralytics-single --bare-seconds 3 --out bench/results/inference_gpu_workers.json
}

neu_steps() {  # inference bench, teacher, students (and the plain twin): issues 3, 4, 6, 8
    inference_step "$@"
    overrides
    step teacher "$PY" bench/detector_neu.py --phase train --scales s --variants attention \
        --epochs "$EPOCHS" --neu "$NEU" "${device_args[@]}"
    step teacher-evaluate "$PY" bench/detector_neu.py --phase evaluate --neu "$NEU"
    local teacher student
    teacher=$(teacher_weights)
    overrides
    # shellcheck disable=SC2086  # METHODS is a list of words
    step distill "$PY" bench/distill_neu.py --teacher-weights "$teacher" --epochs "$EPOCHS" \
        --neu "$NEU" --out bench/results/distill_neu_gpu.json --methods $METHODS "${device_args[@]}"
    student=$(student_weights)
    [[ -n $student && -f $student ]] && cp "$student" "$WORK/out/student.pt"
    overrides
    if [[ $TWIN == 1 ]]; then
        step twin "$PY" bench/detector_neu.py --phase train --scales s --variants plain \
            --epochs "$EPOCHS" --neu "$NEU" "${device_args[@]}"
        step twin-evaluate "$PY" bench/detector_neu.py --phase evaluate --neu "$NEU"
    fi
}

run() {
    : >"$WORK/out/steps.txt"
    cd "$ROOT" && prepare || { echo "preparation failed"; return 1; }
    cd "$COPY" || return 1
    nvidia-smi -L 2>/dev/null
    "$PY" -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ort', ort.get_available_providers())"
    local backends=(pytorch) inference_device=cpu
    if [[ $DEVICE != cpu ]]; then
        inference_device=cuda:0
        "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" &&
            backends+=(onnx)
    fi
    if [[ " $PLAN " == *" neu "* ]]; then
        neu_steps "$inference_device" "${backends[@]}"
    fi
    if [[ " $PLAN " == *" inference "* ]]; then
        inference_step "$inference_device" "${backends[@]}"
    fi
    if [[ " $PLAN " == *" inference-workers "* ]]; then
        workers_step "$inference_device"
    fi
    if [[ " $PLAN " == *" tiled "* ]]; then
        overrides
        # What tiled inspection costs on a GPU station (under a minute): the CPU figure is in
        # tiled_throughput_cpu.json, the GPU one is not measured yet.
        # shellcheck disable=SC2086  # TILED_SIZES is a list of words
        step tiled "$PY" bench/tiled_throughput.py --backend pytorch --neu "$NEU" \
            --sizes ${TILED_SIZES:-1600x200 4000x1000 8000x2000 16000x4000} --frames 8 \
            --out bench/results/tiled_throughput_gpu.json
    fi
    if [[ " $PLAN " == *" neu-twins "* ]]; then
        overrides
        # shellcheck disable=SC2086  # VARIANTS is a list of words
        step twins "$PY" bench/detector_neu.py --phase train --scales s --variants $VARIANTS \
            --epochs "$EPOCHS" --seed "$SEED" --neu "$NEU" "${device_args[@]}" "${parallel_args[@]}"
        step twins-evaluate "$PY" bench/detector_neu.py --phase evaluate --neu "$NEU"
    fi
    if [[ " $PLAN " == *" deeppcb "* ]]; then
        overrides
        step deeppcb deeppcb
    fi
    if [[ " $PLAN " == *" pcb-detector "* ]]; then
        overrides
        step pcb-detector pcb_detector
    fi
    gather
    echo "=== pipeline done"
    touch "$WORK/out/DONE"
}

pack_pieces() {  # here: a tar stream on stdin cut into pieces a call can carry, one per folder
    rm -rf "$ROOT"/.carry-pcb* "$WORK/pack" && mkdir -p "$WORK/pack"
    split -b "$PCB_PIECE" -d - "$WORK/pack/deeppcb.tar." || return 1
    local count i=0 piece
    count=$(ls "$WORK/pack" | wc -l)
    for piece in "$WORK"/pack/deeppcb.tar.*; do
        i=$((i + 1))
        mkdir -p "$ROOT/.carry-pcb$i" && mv "$piece" "$ROOT/.carry-pcb$i/" && echo "$count" >"$ROOT/.carry-pcb$i/pieces"
    done
    rm -rf "$WORK/pack"
    du -sh "$ROOT"/.carry-pcb*
}

case ${1:-} in
start)
    rm -rf "$WORK" && mkdir -p "$WORK/out" "$COPY"
    take_pieces
    tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./bench/.work --exclude='./.carry-pcb*' \
        -cf - . | tar -C "$COPY" -xf -
    setsid nohup bash "$COPY/bench/gpu_session.sh" run >"$LOG" 2>&1 </dev/null &
    echo "started; log in $LOG"
    ;;
run) run ;;
wait)  # print progress until the pipeline ends or the given seconds pass
    take_pieces
    deadline=$((SECONDS + ${2:-540}))
    while [[ ! -f $WORK/out/DONE && $SECONDS -lt $deadline ]]; do sleep 15; done
    cat "$WORK/out/steps.txt" 2>/dev/null
    grep -a "^===\|rc=\|Error\|error" "$LOG" | tail -20
    tail -c 1500 "$LOG" | tr '\r' '\n' | tail -4
    [[ -f $WORK/out/DONE ]] && echo "DONE"
    [[ -n ${3:-} ]] && "$0" collect "$3"
    ;;
pack-deeppcb)  # here, before the session: DeepPCB in pieces a call can carry, one per folder
    tar -C "${2:-$ROOT/../shared/datasets}" -cf - deeppcb | pack_pieces
    ;;
pack-pcb-detector)  # here: the bench's imported DeepPCB (train, val) and database, in pieces
    src=$ROOT/bench/.work/classifier_verdict
    echo "$src" >"$src/.origin"
    (cd "$src/.." && tar -cf - classifier_verdict/.origin classifier_verdict/defects.db \
        classifier_verdict/datasets/deeppcb/{data.yaml,splits,labels/train,labels/val,images/train,images/val}) |
        pack_pieces
    ;;
receive-pcb-detector)  # here, after the session: the pcb-detector plan's result into the bench's work folder
    src=${2:?receive-pcb-detector needs the folder the device files came to}
    dst=$ROOT/bench/.work/classifier_verdict
    mkdir -p "$WORK/received" && cat "$src"/gpu_session.tar.* | tar -x -C "$WORK/received" || exit 1
    got=$WORK/received/pcb_detector
    run_name=$(cat "$got/run_name")
    cp "$dst/defects.db" "$dst/defects.db.before-gpu" && cp "$got/defects.db" "$dst/defects.db" || exit 1
    mkdir -p "$dst/runs/detect/$run_name/weights"
    cp "$got/results.csv" "$got/args.yaml" "$dst/runs/detect/$run_name/"
    cp "$got/best.pt" "$dst/runs/detect/$run_name/weights/best.pt"
    # The device resolved the work folder's link to where it unpacked it: its paths become ours.
    "$PY" "$ROOT/bench/receive_work_db.py" "$dst" || exit 1
    ;;
collect)  # one archive back: the device returns at most 8 files
    # in pieces of 15 MB (a file over 16 MB does not come back): cat gpu_session.tar.* | tar -x
    mkdir -p "${2:?collect needs a folder}" && tar -cf - -C "$WORK/out" . | split -b 15m -d - "$2/gpu_session.tar."
    cp "$LOG" "$2/pipeline.log"
    ls -la "$2"
    ;;
*)
    echo "usage: $0 start | wait [SECONDS] [FOLDER] | collect FOLDER | pack-deeppcb [DATASETS] |" \
        "pack-pcb-detector | receive-pcb-detector FOLDER | run" >&2
    exit 2
    ;;
esac
