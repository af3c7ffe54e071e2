#!/usr/bin/env bash
# Everything bench/RESULTS.md asks of a GPU, in one call: device and versions, the sampler's
# correctness tests on the device, then the sampler target shape (Qwen2.5-0.5B, batch 64,
# prompt 256, 512 new tokens, bfloat16) against transformers, and the train step's MFU.
#
#   bash bench/gpu.sh            # logs under $OUT (the device tool's folder) or ./gpu-out
#
# Needs jax with CUDA, flax, optax, transformers, torch and pytest; not grain or tensorboardX
# (none of these steps imports them). Runs from the repository root without installing redjax.
set -euo pipefail

out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
peak=${PEAK_TFLOPS:-989}  # H100 SXM dense bf16; 989 for H200 too

{
  date -u +%Y-%m-%dT%H:%MZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import sys, jax, flax, optax, torch, transformers as t
print('python', sys.version.split()[0], '| jax', jax.__version__, jax.devices(), '| flax',
      flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__,
      '| transformers', t.__version__)"
} 2>&1 | tee "$out/device.txt"

# Greedy == transformers and == recompute, log-probs == forward, seeds, distributions: on the GPU.
JAX_PLATFORMS=cuda python3 -m pytest -q -p no:cacheprovider tests/test_sampler.py \
  -k "not sharded and not cli and not bad_inputs" 2>&1 | tee "$out/tests.txt" || true

python3 bench/sampler.py --size qwen2.5-0.5b --batch 64 --prompt-len 256 --new-tokens 512 \
  --dtype bfloat16 2>&1 | tee "$out/sampler.txt" || true

python3 bench/step.py --size qwen2.5-0.5b --rows 64 --prompt-len 256 --resp-len 512 \
  --dtype bfloat16 --remat full --peak-tflops "$peak" 2>&1 | tee "$out/step.txt" || true
