#!/usr/bin/env bash
# Everything bench/RESULTS.md asks of a GPU, in one call that explains itself. Each part prints
# its tables to stdout and to a file under $OUT, and runs under `timeout` (seconds below), so
# a hang costs one part, never the run; the timeouts add up to 475 s, under 8 minutes on one
# H100 (each part's compiles included).
#
#   1. device.txt, versions.txt (10 s): GPU, driver; python, jax, flax, optax, torch,
#      transformers versions.
#   2. tests.txt (40 s): the sampler's correctness tests on the device (greedy == transformers
#      and == recompute, log-probs == forward, seeds, distributions), and the Pallas decode
#      attention kernel, compiled for the GPU, against the reference and in the sampler.
#   3. sampler.txt (60 s): the sampler target shape, Qwen2.5-0.5B, batch 64, prompt 256, 512
#      new tokens, bfloat16: decode tokens/s and % of the bandwidth floor (redjax only:
#      transformers generate is ~55x slower there and would not fit the budget), and the bytes
#      the compiled decode step accesses (XLA cost analysis) against the weights + whole cache.
#      ragged.txt (70 s): the trainer's shape, 512 rows (64 prompts x 8), prompt 256, up to
#      1024 new tokens with spread lengths: useful tokens/s with cache growth + compaction,
#      growth only, and the code before both, in one run (the tokens must be identical).
#      decode-attention.txt (25 s): a decode step's attention alone (24 layers, batch 64, 768
#      slots, a quarter / half / all of the 512 new tokens filled), XLA's einsums against the
#      Pallas kernel that reads only the filled blocks: ms per step, GB/s of the filled cache.
#   4. step-768.txt (80 s) and step-4096.txt (75 s): the RED train step (Extend rows + probe),
#      Qwen2.5-0.5B, bfloat16, remat full, at 64 rows x (256 + 512) and 8 x (512 + 3584), one
#      row per attention implementation that runs here (xla, cudnn, chunked on an NVIDIA GPU),
#      each in a process of its own: step time, response tokens/s, MFU, peak device memory
#      (memory_stats). A row that fails (out of memory) or passes 45 s says so; rows print as
#      they finish, so a part cut short keeps the rows it has.
#      step-lora.txt (30 s): the same RED step at 64 x (256 + 512), attention auto, training
#      rank-16 LoRA adapters on every projection of a base frozen in bfloat16 (compare with
#      step-768's cudnn row, the attention auto picks there).
#   5. profile.txt (85 s): kernel profile (jax.profiler) of one train step (64 x (256 + 512),
#      attention auto) and of one sampler decode step (batch 64, prompt 256, 512 new tokens):
#      device time per step by class (matmul, attention, other fusions, copies, collectives)
#      and the top 25 kernels with calls per step.
#
#   bash bench/gpu.sh                    # logs under $OUT (the device tool's folder) or ./gpu-out
#   TIMEOUT_PCT=200 bash bench/gpu.sh    # every timeout doubled, where the budget allows
#
# Runs from the repository root without installing redjax. Needs jax with CUDA, flax, optax,
# transformers, torch and pytest; not grain or tensorboardX (none of these parts imports them).
set -euo pipefail

out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
peak=${PEAK_TFLOPS:-989}  # H100 SXM dense bf16; 989 for H200 too
pct=${TIMEOUT_PCT:-100}   # scales every timeout (200: twice as long a budget)
shape=(--size qwen2.5-0.5b --dtype bfloat16)

# part NAME SECONDS COMMAND...: run COMMAND under timeout, output to stdout and $out/NAME.txt,
# with its exit status (124: timed out) and the seconds it took.
part() {
  local name=$1 secs=$(($2 * pct / 100)) t0=$SECONDS
  shift 2
  {
    echo "## $name (timeout $secs s)"
    timeout "$secs" "$@" 2>&1 || echo "($name exited with status $?)"
    echo "($name took $((SECONDS - t0)) s)"
  } | tee "$out/$name.txt"
}

{
  date -u +%Y-%m-%dT%H:%MZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
} 2>&1 | tee "$out/device.txt"
part versions 10 python3 -c "import sys, jax, flax, optax, torch, transformers as t
print('python', sys.version.split()[0], '| jax', jax.__version__, jax.devices(), '| flax',
      flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__,
      '| transformers', t.__version__)"

part tests 40 env JAX_PLATFORMS=cuda python3 -m pytest -q -p no:cacheprovider \
  tests/test_sampler.py tests/test_attention.py::test_decode_kernel_matches_reference \
  "tests/test_attention.py::test_sampler_matches_xla[pallas-decode]" \
  -k "not sharded and not cli and not bad_inputs"

part sampler 60 python3 bench/sampler.py "${shape[@]}" --batch 64 --prompt-len 256 \
  --new-tokens 512 --skip-torch

part ragged 70 python3 bench/sampler.py "${shape[@]}" --only-ragged --ragged 64x8x256x1024 \
  --skip-torch --repeats 1

part decode-attention 25 python3 bench/sampler.py "${shape[@]}" --batch 64 --prompt-len 256 \
  --new-tokens 512 --attention-table --decode-attention xla,pallas

for lens in "64 256 512 768 80" "8 512 3584 4096 75"; do
  read -r rows prompt resp total secs <<<"$lens"
  part "step-$total" "$secs" python3 bench/step.py "${shape[@]}" --rows "$rows" \
    --prompt-len "$prompt" --resp-len "$resp" --remat full --peak-tflops "$peak" \
    --attention all --variants red --iters 3 --timeout $((45 * pct / 100))
done

part step-lora 30 python3 bench/step.py "${shape[@]}" --rows 64 --prompt-len 256 --resp-len 512 \
  --remat full --peak-tflops "$peak" --variants red-lora --lora-rank 16 --iters 2 \
  --timeout $((28 * pct / 100))

part profile 85 python3 bench/kernel_profile.py "${shape[@]}" --rows 64 --prompt-len 256 \
  --resp-len 512 --remat full --batch 64 --new-tokens 512 --steps 2
