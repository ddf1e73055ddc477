#!/bin/sh
# The quick start: install what is missing, train the default experiment (SegNet on the built-in
# 'shapes' dataset, ACoSP at sparsity 0.75) through the hard conversion, test it, and say where
# everything is and how the pruned network compares with the dense one.
#   sh tool/quickstart.sh [key value ...]     the pairs override the config, as for tool/train.sh
# PYTHON picks the interpreter (default: python, else python3), DEVICE the device (default auto).
set -eu
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
export PYTHON
# semseg must be installed (pip install -e .), not merely found in the current folder: scripts run from tool/.
if ! "$PYTHON" -c "import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]; import torch, numpy, cv2, PIL, yaml, tensorboardX, tqdm, semseg" >/dev/null 2>&1; then
    echo "installing the dependencies: $PYTHON -m pip install -e ."
    "$PYTHON" -m pip install -e .
fi
start=$(date +%s)
sh tool/train.sh shapes segnet_0.75 "$@"
echo "trained and tested in $(( $(date +%s) - start )) s"
"$PYTHON" tool/report.py shapes segnet_0.75 "$@"
