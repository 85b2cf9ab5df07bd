#!/usr/bin/env bash
# Issue 9's GPU figures, one phase per call, SD 1.5 shapes (random weights), 512x512, from the repo root:
#
#   experiments/bench/gpu.sh acceptance  # issue 9's acceptance rows only, on the current code, ~10 min
#   experiments/bench/gpu.sh eager     # GPU tests; eager / channels_last / CUDA graphs, ~4 min
#   experiments/bench/gpu.sh compile   # compile GPU tests + torch.compile (pilot's and diffusers'), ~6 min
#   experiments/bench/gpu.sh memory    # GPU tests, memory rows, VAE peak trace, feedback loop, flow, ~5 min
#
# Each benchmark gets its own time limit (LIMIT seconds, default 240) so one that hangs does not
# lose the others; the whole output goes to $OUT/<phase>.log (OUT: runs/bench_gpu by default),
# ending with the acceptance points read from its tables (`experiments.bench.acceptance`).
set -uo pipefail
phase=${1:-eager}
out=${OUT:-runs/bench_gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
# $1: pytest -k expression; the compile tests (~1 min) run in the compile phase only
gpu_tests() { "$py" -m pytest -q -p no:cacheprovider -m gpu -k "$1" tests/diffusion/test_speed.py \
    tests/experiments/test_bench_speed.py tests/models/test_vae.py tests/nn/test_norms.py tests/animation/test_feedback.py 2>&1 | tail -40; }  # room for a failure's traceback
bench() { echo "== $(date -u +%T) $*"; timeout "${LIMIT:-240}" "$py" -m "experiments.bench.$@" 2>&1; echo; }
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$py" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
    fast=(--size 512 --channels-last --cuda-graphs)
    case $phase in
    acceptance)  # compiled, graphed and eager UNet step with memory, the whole image: a session's first call
        LIMIT=420 bench unet "${fast[@]}" --compile --dtypes fp16 --iters 10 --own-process-memory
        bench pipeline "${fast[@]}" --dtype fp16
        bench unet "${fast[@]}" --dtypes fp16 --iters 10 --ff-chunks off --own-process-memory
        ;;
    eager)
        gpu_tests "not compiled and not inductor"
        bench flops
        bench unet "${fast[@]}" --dtypes fp16,bf16 --iters 10 --ff-chunks off
        bench controlnet "${fast[@]}" --dtype fp16 --iters 10
        bench vae --size 512 --dtypes fp32,fp16,bf16 --channels-last
        bench vae --size 512 --dtype fp16 --iters 1 --profile
        bench pipeline "${fast[@]}" --dtype fp16
        bench animate --preset sd15 --dtype fp16 "${fast[@]}"
        ;;
    memory)  # the memory rows, what a VAE decode holds at its peak, the feedback loop, ~5 min
        gpu_tests "not compiled and not inductor"
        bench unet "${fast[@]}" --dtypes fp16 --iters 10 --ff-chunks off --own-process-memory
        bench controlnet "${fast[@]}" --dtype fp16 --iters 10 --own-process-memory
        bench vae --size 512 --dtype fp16 --channels-last --bands 4194304,off --split-norms 1,131072
        bench vae --size 512 --dtype fp16 --images 4 --sliced
        bench peak_trace --size 512 --dtype fp16
        bench pipeline "${fast[@]}" --dtype fp16
        bench animate --preset sd15 --dtype fp16 "${fast[@]}"
        bench flow --size 512
        ;;
    compile)  # first the two tests that separate the third session's launch failure
        gpu_tests "compiled or inductor or cublas"
        bench unet "${fast[@]}" --compile --dtypes fp16 --iters 10
        bench pipeline "${fast[@]}" --compile --dtype fp16
        ;;
    *) echo "unknown phase $phase (acceptance, eager, compile, memory)"; exit 2 ;;
    esac
    date -u +"== done %T"
} 2>&1 | tee "$out/$phase.log"
# issue 9's acceptance points from the tables above (exit 1 if one does not hold)
"$py" -m experiments.bench.acceptance "$out/$phase.log" 2>&1 | tee -a "$out/$phase.log"
