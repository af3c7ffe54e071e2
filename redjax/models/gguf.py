"""A GGUF file (llama.cpp's format) as a Hugging Face folder: `redjax import FILE.gguf OUT/`.

transformers' own GGUF loader reads and dequantizes the file (fewer lines than a parser, and
maintained); this module checks the file fits redjax and writes the float32 folder it returns.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from redjax.models import safetensors_io
from redjax.models.arch import ARCHS, arch
from redjax.models.hf import config_from_hf

MISSING = "reading a GGUF file needs the gguf package and torch: pip install 'redjax[gguf]'"


def _field(reader: Any, key: str) -> Any:
    """One metadata value of a GGUF file (a string or a number), None when absent."""
    import gguf

    f = reader.fields.get(key)
    if f is None or not f.data:
        return None
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else value.tolist()[0]


def check_file(path: str) -> dict[str, Any]:
    """Refuse a file redjax cannot run, before any tensor is read; the config overrides it needs.

    transformers reads no qwen3 head_dim (attention.key_length; Qwen3Config's default is 128).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist")
    if any(importlib.util.find_spec(m) is None for m in ("gguf", "torch")):
        raise ValueError(MISSING)
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a GGUF file ({e})") from None
    name = _field(reader, "general.architecture")
    if name not in ARCHS:
        raise ValueError(
            f"{path}: unsupported architecture {name!r}: redjax supports {', '.join(ARCHS)}"
        )
    scaling = _field(reader, f"{name}.rope.scaling.type")
    factor = _field(reader, f"{name}.rope.scaling.factor")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        scaling = "llama3"
    elif scaling in ("none", None) or (scaling == "linear" and factor in (None, 1.0)):
        scaling = None
    if scaling:
        raise ValueError(
            f"{path}: rope scaling {scaling!r} is not read by transformers' GGUF loader "
            "(import the model's Hugging Face folder instead)"
        )
    key_length = _field(reader, f"{name}.attention.key_length")
    return {} if key_length is None else {"head_dim": int(key_length)}


def import_gguf(path: str, out: str) -> str:
    """Write a GGUF file as a Hugging Face folder of float32 safetensors plus its tokenizer
    (chat template included), which redjax and transformers load; returns `out`."""
    overrides = check_file(path)
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"output folder {out!r} exists and is not empty")
    import torch
    import transformers

    folder, name = os.path.split(os.path.abspath(path))
    kw = dict(gguf_file=name, local_files_only=True)
    config = transformers.AutoConfig.from_pretrained(folder, **kw, **overrides)
    try:
        arch(config.model_type)  # a llama file named "mistral" loads as mistral
        config_from_hf(config)  # the options redjax runs (activation, rope, attention)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, **kw, config=config, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kw)
    os.makedirs(out, exist_ok=True)
    write_model(model, out)
    tokenizer.save_pretrained(out)
    return out


def write_model(model: Any, out: str) -> None:
    """config.json, generation_config.json and model.safetensors (float32) of a GGUF-loaded
    model: its save_pretrained refuses a model loaded from a (quantized) GGUF file."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.dtype = "float32"
    tensors = {
        k: np.ascontiguousarray(v.detach().float().cpu().numpy())
        for k, v in model.state_dict().items()
        if not (config.tie_word_embeddings and k == "lm_head.weight")  # tied: no own tensor
    }
    safetensors_io.write(os.path.join(out, "model.safetensors"), tensors)
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
