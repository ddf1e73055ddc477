#!/bin/sh
# The CUDA checks in one command, at most BUDGET seconds (default 480) on one H200; every step writes its own log.
#   sh benchmarks/gpu_check.sh [LOG_FOLDER]      default: $OUT when set, else exp/gpu_check
#   QUICK=1 DEVICE=cpu sh benchmarks/gpu_check.sh /tmp/gpu_check   a dry run of the same steps on tiny inputs
#   ONLY="1_test_cuda 4_device_agreement" sh benchmarks/gpu_check.sh   those steps alone (after the smoke step)
# 0. Smoke (benchmarks/cuda_smoke.py): imports, one CUDA conv forward and backward, one AMP step of a
#    masked network. When it fails nothing else runs: a broken environment fails in seconds.
# 1. tests/test_cuda.py: compression exact in float32 on CUDA, float16 within 2e-2, a masked AMP
#    step, tool/train.py with amp and coupled masks, the speed benchmark in float16.
# 2. Training throughput, AMP + channels_last, dense / soft / hard masks: PSPNet50 at 473x473 and
#    SegNet at 360x480, batch 8 (benchmarks/train_step_overhead.py; images/s, overhead, peak memory);
#    then in float32 at the batches of the memory table in docs/training.md.
# 3. Compressed latency against MAC reduction (benchmarks/compress_speed.py): float16 and float32 at
#    batch 1 and 8, and float16 at batch 8 with channel counts rounded up to multiples of 8.
# 4. One CUDA process with sync_bn true through the hard conversion, against the same run on the
#    CPU: masks and mIoU (benchmarks/device_agreement.py).
# 5. Sliding-window test throughput of PSPNet50 at Cityscapes' size (benchmarks/sliding_window_speed.py),
#    as the config has it (float32) and with amp true.
# Each step runs under its own time limit, cut to what is left of BUDGET; a failed step does not stop
# the others, and the summary at the end lists every step with its status, its time and its log. The
# exit status is the number of steps that failed.
# The device image has no tensorboardX and no network: put its wheel in .gpu_wheels/ first
# (pip download tensorboardX --no-deps -d .gpu_wheels) and carry that folder; it is installed from there.
set -u
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi
fi
export PYTHON PYTHONUNBUFFERED=1
# The device machine runs the working tree as it is, not installed: its packages (acosp, semseg) come from here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
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
    pairs=1 batch=2 psp_crop=33 segnet_crop=32x48 runs=1 big_batch=2 memory_pairs=1
    speed="--quick" agreement="epochs 1 ending_epoch 1" window="--images 1 --size 65x129 base_size 129 test_h 65 test_w 65"
else
    pairs=10 batch=8 psp_crop=473 segnet_crop=360x480 runs=5 big_batch=8 memory_pairs=3
    speed="" agreement="" window="--images 3"
fi
summary="$log/summary.txt"
: >"$summary"
failed=0
budget=${BUDGET:-480}
began=$(date +%s)

# step NAME SECONDS COMMAND...: run COMMAND under a time limit (cut to what is left of the budget),
# log to $log/NAME.log, record the outcome. With ONLY set, a step it does not name is left out.
step() {
    name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [ "$name" != 0_smoke ]; then
        case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
    fi
    left=$((budget - ($(date +%s) - began)))
    [ "$limit" -le "$left" ] || limit=$left
    if [ "$limit" -lt 5 ]; then
        printf '%-30s %-24s %5s s  %s\n' "$name" "skipped: budget spent" 0 "-" | tee -a "$summary"
        failed=$((failed + 1))
        return 1
    fi
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
    printf '%-30s %-24s %5s s  %s\n' "$name" "$outcome" "$seconds" "$log/$name.log" | tee -a "$summary"
    return "$status"
}

if ! step 0_smoke 60 "$PYTHON" benchmarks/cuda_smoke.py --device "$device"; then
    cat "$log/0_machine.log" "$log/0_smoke.log"
    echo "the smoke step failed: nothing else runs"
    exit 1
fi
step 1_test_cuda 150 sh tests/run.sh -q -p no:cacheprovider tests/test_cuda.py
step 2_train_pspnet50 90 "$PYTHON" benchmarks/train_step_overhead.py --device "$device" --networks PSPNet50 \
    --sizes "$psp_crop" --batch "$batch" --pairs "$pairs"
step 2_train_segnet 60 "$PYTHON" benchmarks/train_step_overhead.py --device "$device" --networks SegNet \
    --sizes "$segnet_crop" --batch "$batch" --pairs "$pairs"
half=""
[ "$device" = cuda ] && half="--half"
# compress PRECISION BATCH [NAME_SUFFIX FLAGS...]: the latency step of that float precision and batch
compress() {
    precision=$1 images=$2 suffix=${3:-}
    shift 2
    [ $# -gt 0 ] && shift
    flags=""
    [ "$precision" = half ] && flags=$half
    # shellcheck disable=SC2086
    step "3_compress_${precision}_batch$images$suffix" 75 "$PYTHON" benchmarks/compress_speed.py --device "$device" \
        --batch "$images" --runs "$runs" $flags $speed "$@"
}
compress half 1
compress float 1
compress half "$big_batch"
compress float "$big_batch"
# shellcheck disable=SC2086
step 4_device_agreement 120 "$PYTHON" benchmarks/device_agreement.py --devices cpu "$device" \
    --folder "$log/device_agreement" $agreement
# shellcheck disable=SC2086
step 5_sliding_window 60 "$PYTHON" benchmarks/sliding_window_speed.py --device "$device" $window
# the float32 memory of the docs' table: PSPNet50 at 2 images per GPU, CamVid's SegNet at 8
step 2_memory_float32_pspnet50 45 "$PYTHON" benchmarks/train_step_overhead.py --device "$device" --float32 \
    --networks PSPNet50 --sizes "$psp_crop" --batch 2 --pairs "$memory_pairs"
step 2_memory_float32_segnet 45 "$PYTHON" benchmarks/train_step_overhead.py --device "$device" --float32 \
    --networks SegNet --sizes "$segnet_crop" --batch "$batch" --pairs "$memory_pairs"
compress half "$big_batch" _round8 --round-to 8
# shellcheck disable=SC2086
step 5_sliding_window_amp 45 "$PYTHON" benchmarks/sliding_window_speed.py --device "$device" $window amp true

echo
echo "== machine"
cat "$log/0_machine.log" "$log/0_smoke.log"
for file in "$log"/2_*.log "$log"/4_*.log "$log"/5_*.log; do
    [ -f "$file" ] || continue
    echo "== $(basename "$file" .log)"
    grep -E '^\||windows|GPU|CPU|float' "$file"
done
for file in "$log"/3_*.log; do
    [ -f "$file" ] || continue
    echo "== $(basename "$file" .log)"
    grep -vE '^(\s*$|training|Warning)' "$file" | grep -E 'batch|sparsity|^ +0\.' || true
done
echo "== summary ($failed failed)"
cat "$summary"
exit "$failed"
