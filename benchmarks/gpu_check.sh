#!/bin/sh
# The CUDA checks in one command, about 5 to 8 minutes on one H200; every step writes its own log.
#   sh benchmarks/gpu_check.sh [LOG_FOLDER]      default: $OUT when set, else exp/gpu_check
#   QUICK=1 DEVICE=cpu sh benchmarks/gpu_check.sh /tmp/gpu_check   a dry run of the same steps on tiny inputs
# 1. tests/test_cuda.py: compression exact in float32 on CUDA, float16 within 2e-2, a masked AMP
#    step, tool/train.py with amp and coupled masks, the speed benchmark in float16.
# 2. Training throughput, AMP + channels_last, dense / soft / hard masks: PSPNet50 at 473x473 and
#    SegNet at 360x480, batch 8 (benchmarks/train_step_overhead.py; images/s, overhead, peak memory).
# 3. Compressed latency against MAC reduction (benchmarks/compress_speed.py): float16 and float32 at
#    batch 1, float16 at batch 8.
# 4. One CUDA process with sync_bn true through the hard conversion, against the same run on the
#    CPU: masks and mIoU (benchmarks/device_agreement.py).
# 5. Sliding-window test throughput of PSPNet50 at Cityscapes' size (benchmarks/sliding_window_speed.py).
# Each step runs under its own time limit; a failed step does not stop the others, and the summary
# at the end lists every step with its status, its time and its log. The exit status is the number
# of steps that failed.
# The device image has no tensorboardX and no network: put its wheel in .gpu_wheels/ first
# (pip download tensorboardX --no-deps -d .gpu_wheels) and carry that folder; it is installed from there.
set -u
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi
fi
export PYTHON PYTHONUNBUFFERED=1
log=${1:-${OUT:-exp/gpu_check}}
mkdir -p "$log"
device=${DEVICE:-cuda}
quick=${QUICK:-0}

if ! "$PYTHON" -c "import tensorboardX" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --no-index --find-links .gpu_wheels tensorboardX >"$log/0_install.log" 2>&1 ||
        echo "tensorboardX is missing and .gpu_wheels/ holds no wheel of it: the training steps will fail"
fi
{
    date -u "+%Y-%m-%d %H:%M UTC"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
} >"$log/0_machine.log" 2>&1

if [ "$quick" = 1 ]; then
    pairs=1 batch=2 psp_crop=33 segnet_crop=32x48 runs=1 big_batch=2
    speed="--quick" agreement="epochs 1 ending_epoch 1" window="--images 1 --size 65x129 base_size 129 test_h 65 test_w 65"
else
    pairs=10 batch=8 psp_crop=473 segnet_crop=360x480 runs=5 big_batch=8
    speed="" agreement="" window="--images 3"
fi
summary="$log/summary.txt"
: >"$summary"
failed=0

# step NAME SECONDS COMMAND...: run COMMAND under a time limit, log to $log/NAME.log, record the outcome.
step() {
    name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$log/$name.log" 2>&1
    status=$?
    seconds=$(($(date +%s) - start))
    case $status in
        0) outcome=ok ;;
        124) outcome="timed out after ${limit} s" ;;
        *) outcome="failed ($status)" ;;
    esac
    [ "$status" -eq 0 ] || failed=$((failed + 1))
    printf '%-28s %-24s %5s s  %s\n' "$name" "$outcome" "$seconds" "$log/$name.log" | tee -a "$summary"
}

step 1_test_cuda 200 sh tests/run.sh -q -p no:cacheprovider tests/test_cuda.py
step 2_train_pspnet50 120 "$PYTHON" benchmarks/train_step_overhead.py --device "$device" --networks PSPNet50 \
    --sizes "$psp_crop" --batch "$batch" --pairs "$pairs"
step 2_train_segnet 90 "$PYTHON" benchmarks/train_step_overhead.py --device "$device" --networks SegNet \
    --sizes "$segnet_crop" --batch "$batch" --pairs "$pairs"
half=""
[ "$device" = cuda ] && half="--half"
# shellcheck disable=SC2086
step 3_compress_half_batch1 120 "$PYTHON" benchmarks/compress_speed.py --device "$device" $half --runs "$runs" $speed
# shellcheck disable=SC2086
step 3_compress_float_batch1 120 "$PYTHON" benchmarks/compress_speed.py --device "$device" --runs "$runs" $speed
# shellcheck disable=SC2086
step 3_compress_half_batch8 120 "$PYTHON" benchmarks/compress_speed.py --device "$device" $half --batch "$big_batch" \
    --runs "$runs" $speed
# shellcheck disable=SC2086
step 4_device_agreement 180 "$PYTHON" benchmarks/device_agreement.py --devices cpu "$device" \
    --folder "$log/device_agreement" $agreement
# shellcheck disable=SC2086
step 5_sliding_window 90 "$PYTHON" benchmarks/sliding_window_speed.py --device "$device" $window

echo
echo "== machine"
cat "$log/0_machine.log"
for name in 2_train_pspnet50 2_train_segnet 4_device_agreement 5_sliding_window; do
    echo "== $name"
    grep -E '^\||windows' "$log/$name.log"
done
for name in 3_compress_half_batch1 3_compress_float_batch1 3_compress_half_batch8; do
    echo "== $name"
    grep -vE '^(\s*$|training|Warning)' "$log/$name.log" | grep -E 'batch|sparsity|^ +0\.' || true
done
echo "== summary ($failed failed)"
cat "$summary"
exit "$failed"
