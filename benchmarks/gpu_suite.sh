#!/bin/bash
# Every GPU measurement the project still lacks, as one prepared run for a session that is lent a device machine:
# the Triton kernels against eager and torch.compile (benchmarks/kernels), the grouped SwiGLU at Nucleus-Image's
# real shapes (benchmarks/moe), and what HSA's active-token forward saves at the real Flux-dev, Wan 1.3B and
# Nucleus-Image sizes (benchmarks/steps). Rows and a log go to $OUT (the device tool's folder that comes back).
#
#   bash benchmarks/gpu_suite.sh kernels   # about 6 minutes on an H100: the seven kernel scripts
#   bash benchmarks/gpu_suite.sh models    # about 4 minutes: grouped SwiGLU, then the three HSA forwards
#   bash benchmarks/gpu_suite.sh smoke     # the same steps at tiny sizes on a CPU (Triton interpreter): a check
#
# The device machine has torch and Triton but not diffusers: before the call, here, in the repository root,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata zipp
# and name .whl in the call's carry. The call sends a copy of the checkout without .git, so commit first and set
# ACCEL_SOURCE_SHA to the commit sent (`git rev-parse HEAD` on a clean checkout): the rows record it as declared.
# Each step has its own time limit, so one that hangs costs its limit, not the call.
set -u
part=${1:-}
case "$part" in kernels|models|smoke) ;; *) echo "usage: gpu_suite.sh kernels|models|smoke" >&2; exit 2;; esac
out=${OUT:-/tmp/gpu-suite}
mkdir -p "$out"
log="$out/suite-$part.log"
export PYTHONUNBUFFERED=1

step() {  # step LIMIT_SECONDS command...: run it with a time limit, its output in the log
    local limit=$1
    shift
    echo "== $(date +%T) $* (limit ${limit}s)" >> "$log"
    timeout "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    echo "== exit $rc" >> "$log"
    echo "$(date +%T) exit $rc: $*"
}

if [ "$part" != smoke ]; then
    if ls .whl/*.whl > /dev/null 2>&1; then  # diffusers and what it needs beyond the machine's image
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
            || exit 2
        export PYTHONPATH=/tmp/site
    fi
    # accel itself, installed (its subpackages live in root folders that pyproject maps into accel.*)
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 2
    export PYTHONPATH=/tmp/site
    nvidia-smi -L >> "$log" 2>&1
fi
python3 -c "import torch, triton, diffusers, accel; print('torch', torch.__version__, 'triton', triton.__version__, \
'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())" >> "$log" 2>&1 || { cat "$log"; exit 2; }

smoke=()
[ "$part" = smoke ] && smoke=(--smoke --allow-dirty)  # a check of the script: its rows are not results
if [ "$part" != models ]; then
    for op in modulated_norm gated_residual qk_norm_rope euler sde resample confidence; do
        step 90 python3 benchmarks/kernels/bench_$op.py --seed 0 "${smoke[@]}" --json "$out/kernels.json"
    done
fi
if [ "$part" != kernels ]; then
    step 150 python3 benchmarks/moe/bench_grouped_swiglu.py --seed 0 "${smoke[@]}" --json "$out/grouped-swiglu.json"
    for size in flux-dev wan-1.3b nucleus-image; do
        model=${size%%-*}
        args=(--model "$model" --size "$size" --prompts 1 --seed 0 --repeats 3)
        [ "$part" = smoke ] && args=(--model "$model" --size small --prompts 1 --seed 0 --repeats 1 --fractions 0.5
                                     --allow-dirty)
        [ "$model" = nucleus ] && args+=(--engine)
        step 150 python3 benchmarks/steps/bench_dit_hsa_forward.py "${args[@]}" --json "$out/hsa-forward-$size.json"
    done
fi
echo "rows and log in $out"
