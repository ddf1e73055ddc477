#!/bin/sh
# Test an experiment: sh tool/test.sh DATASET EXP [key value ...]
#
# Reads config/DATASET/DATASET_EXP.yaml, the checkpoint exp/DATASET/EXP/model/final.pth (or
# model_path) and writes exp/DATASET/EXP/result/ (result/ beside save_path when that is overridden,
# unless the config names a save_folder). NPROC=4 runs four processes under torchrun.
# PYTHON picks the interpreter (default: python), DEVICE the device (auto, cpu or cuda; default auto).
set -e
if [ "$#" -lt 2 ]; then
    echo "usage: sh tool/test.sh DATASET EXP [key value ...]" >&2
    exit 2
fi
dataset=$1
exp=$2
shift 2
cd "$(dirname "$0")/.."
# This checkout's acosp and semseg, whether or not (or however) they are installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
config=config/$dataset/${dataset}_$exp.yaml
if [ ! -f "$config" ]; then
    echo "error: $config not found (sh tool/test.sh DATASET EXP looks for config/DATASET/DATASET_EXP.yaml)" >&2
    exit 2
fi
folder=exp/$dataset/$exp
if [ "${NPROC:-1}" -gt 1 ]; then
    set -- -m torch.distributed.run --standalone --nproc_per_node "$NPROC" tool/test.py --config "$config" --device "${DEVICE:-auto}" \
        save_path "$folder/model" "$@"
else
    set -- tool/test.py --config "$config" --device "${DEVICE:-auto}" save_path "$folder/model" "$@"
fi
exec "${PYTHON:-python}" -u "$@"
