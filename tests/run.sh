#!/bin/sh
# The whole test suite, from the repository root: sh tests/run.sh [pytest options]
# Installs the project with its test extra first when pytest or a dependency is missing.
set -eu
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
# semseg must be installed (pip install -e .), not merely found in the current folder: scripts run from tool/.
if ! "$PYTHON" -c "import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]; import pytest, torch, numpy, cv2, PIL, yaml, tensorboardX, tqdm, semseg" >/dev/null 2>&1; then
    echo "installing the project and its test dependencies: $PYTHON -m pip install -e .[test]"
    "$PYTHON" -m pip install -e ".[test]"
fi
exec "$PYTHON" -m pytest "$@"
