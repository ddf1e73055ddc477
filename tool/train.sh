#!/bin/sh
# Train one experiment, then test its final model:
#   sh tool/train.sh DATASET EXP [key value ...]      e.g. sh tool/train.sh cityscapes pspnet50_0.75
# uses config/DATASET/DATASET_EXP.yaml and writes exp/DATASET/EXP/. The key value pairs override
# the config for training and testing alike. NPROC=N starts N processes per machine with torchrun;
# NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT spread them over several machines. PYTHON picks
# the interpreter (default: python), DEVICE the device (auto, cpu or cuda; default auto).
# Exit status: 0 trained and tested; 75 stopped by SIGTERM or SIGUSR1 with last.pth saved
# ('resume auto' continues); 130 stopped by Ctrl-C; anything else failed.
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: sh tool/train.sh DATASET EXP [key value ...]" >&2
    exit 2
fi
dataset=$1
exp=$2
shift 2
cd "$(dirname "$0")/.."
# This checkout's acosp and semseg, whether or not (or however) they are installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
config="config/$dataset/${dataset}_$exp.yaml"
if [ ! -f "$config" ]; then
    echo "error: no config $config (see config/$dataset/ for the experiments there are)" >&2
    exit 2
fi
python=${PYTHON:-python}
nproc=${NPROC:-1}
nnodes=${NNODES:-1}
device=${DEVICE:-auto}

# Runs "$@" in the background and waits for it, passing TERM and USR1 on (a cluster's preemption,
# `timeout`, `kill`), so that the training process saves last.pth and exits 75 rather than being
# orphaned. Ctrl-C reaches the training process from the terminal itself. torchrun passes the
# signal on to its workers, which save and exit 75, but exits 1 itself: that becomes 75 here.
run_forwarding() {
    "$@" &
    child=$!
    passed_on=0
    trap 'passed_on=1; kill -TERM "$child" 2>/dev/null' TERM
    trap 'passed_on=1; kill -USR1 "$child" 2>/dev/null' USR1
    trap '' INT
    code=0
    wait "$child" || code=$?
    while [ "$code" -gt 128 ] && kill -0 "$child" 2>/dev/null; do  # a signal cut the wait short
        code=0
        wait "$child" || code=$?
    done
    trap - TERM USR1 INT
    if [ "$passed_on" = 1 ] && [ "$code" = 1 ] && [ "$2" = -m ]; then
        code=75  # torchrun (python -m torch.distributed.run) after its workers saved
    fi
    return "$code"
}

status=0
if [ "$nproc" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
    if [ "$nnodes" -gt 1 ]; then
        # Several machines: every one runs this script with its own NODE_RANK and the same master.
        run_forwarding "$python" -m torch.distributed.run --nproc_per_node="$nproc" --nnodes="$nnodes" \
            --node_rank="${NODE_RANK:?set NODE_RANK for a run on several machines}" \
            --master_addr="${MASTER_ADDR:?set MASTER_ADDR}" --master_port="${MASTER_PORT:?set MASTER_PORT}" \
            tool/train.py --config "$config" --device "$device" "$@" || status=$?
    else
        # One machine: --standalone finds a free port, so runs side by side do not collide.
        run_forwarding "$python" -m torch.distributed.run --standalone --nproc_per_node="$nproc" \
            tool/train.py --config "$config" --device "$device" "$@" || status=$?
    fi
else
    run_forwarding "$python" tool/train.py --config "$config" --device "$device" "$@" || status=$?
fi
if [ "$status" -ne 0 ]; then
    echo "training failed (exit code $status): not testing" >&2
    exit "$status"
fi
if [ -f tool/test.sh ] && [ "${NODE_RANK:-0}" = 0 ]; then
    sh tool/test.sh "$dataset" "$exp" "$@"
fi
