"""Shared test set-up: 8 virtual CPU devices for sharding tests; fixtures of tiny random HF
checkpoints (the helpers themselves are in tests/helpers.py, which test modules import)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from helpers import make_hf_checkpoint, tiny_hf_config  # noqa: E402, F401 (re-exported)


@pytest.fixture(params=["llama", "qwen2", "qwen3"])
def family(request):
    return request.param


@pytest.fixture
def hf_checkpoint(tmp_path, family):
    """(folder, torch model) of a tiny random checkpoint of each family."""
    path = tmp_path / family
    return str(path), make_hf_checkpoint(path, family)
