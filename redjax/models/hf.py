"""Hugging Face checkpoint folders in and out: config.json, safetensors shards, tokenizer files.

Loading reads one tensor at a time from memory-mapped files and places each parameter straight
onto its sharding, so a checkpoint never sits in memory twice, nor whole on one device.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from redjax import hub
from redjax.models import safetensors_io
from redjax.models.arch import arch
from redjax.models.model import Model
from redjax.models.transformer import ModelConfig, param_shapes
from redjax.sharding import to_host

LAYER_NAMES = {
    ("attn", "q"): "self_attn.q_proj",
    ("attn", "k"): "self_attn.k_proj",
    ("attn", "v"): "self_attn.v_proj",
    ("attn", "o"): "self_attn.o_proj",
    ("attn", "q_norm"): "self_attn.q_norm",
    ("attn", "k_norm"): "self_attn.k_norm",
    ("mlp", "gate"): "mlp.gate_proj",
    ("mlp", "up"): "mlp.up_proj",
    ("mlp", "down"): "mlp.down_proj",
    ("attn_norm",): "input_layernorm",
    ("mlp_norm",): "post_attention_layernorm",
}
TOP_NAMES = {("embed",): "model.embed_tokens", ("norm",): "model.norm", ("lm_head",): "lm_head"}
LEAF_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}


def config_from_hf(
    hf: Any, *, dtype: str = "float32", param_dtype: str | None = None
) -> ModelConfig:
    """ModelConfig from a transformers config object (Llama, Qwen2, Qwen3)."""
    name = getattr(hf, "model_type", None)
    family = arch(name)
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf.hidden_act!r}: redjax supports silu")
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    theta = rope.pop("rope_theta", getattr(hf, "rope_theta", 10000.0))
    if not rope:
        rope = dict(getattr(hf, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(
            f"unsupported rope_type {rope_type!r}: redjax supports default, linear and llama3"
        )
    if getattr(hf, "use_sliding_window", False):
        raise ValueError("unsupported use_sliding_window=true: redjax has full attention only")
    bias = bool(getattr(hf, "attention_bias", False))
    extra = {
        k: _ids(getattr(hf, k, None)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    return ModelConfig(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        arch=name,
        rope_theta=float(theta),
        rope_scaling=None if rope_type == "default" else tuple(sorted(rope.items())),
        rms_norm_eps=float(hf.rms_norm_eps),
        qkv_bias=bias if family.qkv_bias is None else family.qkv_bias,
        o_bias=bias if family.qkv_bias is None else False,
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        qk_norm=family.qk_norm,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        max_position_embeddings=int(getattr(hf, "max_position_embeddings", 32768)),
        dtype=dtype,
        param_dtype=param_dtype or dtype,
        extra=tuple(sorted((k, v) for k, v in extra.items() if v is not None)),
        generation_eos=_id_tuple(extra["eos_token_id"]),
    )


def _ids(value: Any) -> Any:
    """A token id field as a hashable value: an int, a tuple of ints (a list in JSON), or None."""
    return tuple(int(i) for i in value) if isinstance(value, list | tuple) else value


def _id_tuple(value: Any) -> tuple[int, ...]:
    """A token id field (an int, a list of ints or None) as a tuple of ids."""
    if value is None:
        return ()
    return tuple(int(i) for i in value) if isinstance(value, list | tuple) else (int(value),)


def config_to_hf(cfg: ModelConfig) -> Any:
    """A transformers config object that describes the same model."""
    import transformers

    family = arch(cfg.arch)
    cls = getattr(transformers, family.hf_config)
    rope = {"rope_type": "default", **dict(cfg.rope_scaling or ()), "rope_theta": cfg.rope_theta}
    kw = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=rope,
        hidden_act="silu",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.extra},
    )
    if family.qkv_bias is None:  # the family takes its bias from the config
        kw["attention_bias"] = cfg.qkv_bias
    if cfg.arch == "llama":
        kw["mlp_bias"] = cfg.mlp_bias
    hf = cls(**kw)
    hf.architectures = [cls.__name__.replace("Config", "ForCausalLM")]
    hf.dtype = cfg.param_dtype
    return hf


def hf_name(path: tuple[str, ...], layer: int | None = None) -> str:
    """Hugging Face tensor name of one parameter leaf (of one layer, for scanned leaves)."""
    *mod, leaf = path
    if mod[0] == "layers":
        return f"model.layers.{layer}.{LAYER_NAMES[tuple(mod[1:])]}.{LEAF_NAMES[leaf]}"
    return f"{TOP_NAMES[tuple(mod)]}.{LEAF_NAMES[leaf]}"


def _to_hf(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    return x.T if path[-1] == "kernel" else x  # Dense kernels are [in, out]; torch stores [out, in]


def _hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(shape)) if path[-1] == "kernel" else tuple(shape)


def _key_path(kp) -> tuple[str, ...]:
    return tuple(k.key for k in kp)


def read_config(path: str, **kw: Any) -> ModelConfig:
    """Read config.json (and generation_config.json's end ids) of a checkpoint folder or hub id
    into a ModelConfig, with errors naming the file."""
    import transformers

    path = hub.model_folder(path, weights=False)
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist")
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{cfg_file} not found: a model folder needs a config.json")
    try:
        with open(cfg_file) as f:
            model_type = json.load(f).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: invalid JSON ({e})") from None
    try:
        arch(model_type)
    except ValueError as e:
        raise ValueError(f"{cfg_file}: {e}") from None
    cfg = config_from_hf(transformers.AutoConfig.from_pretrained(path), **kw)
    gen_file = os.path.join(path, "generation_config.json")
    if os.path.isfile(gen_file):
        try:
            with open(gen_file) as f:
                eos = json.load(f).get("eos_token_id")
        except json.JSONDecodeError as e:
            raise ValueError(f"{gen_file}: invalid JSON ({e})") from None
        cfg = cfg.replace(generation_eos=_id_tuple(eos) or cfg.generation_eos)
    return cfg


def write_config(cfg: ModelConfig, path: str) -> None:
    """config.json of `cfg` in folder `path`, and generation_config.json with its end ids."""
    import transformers

    config_to_hf(cfg).save_pretrained(path)
    if cfg.generation_eos:
        extra = dict(cfg.extra)
        eos = list(cfg.generation_eos)
        transformers.GenerationConfig(
            bos_token_id=extra.get("bos_token_id"),
            eos_token_id=eos[0] if len(eos) == 1 else eos,
            pad_token_id=extra.get("pad_token_id"),
        ).save_pretrained(path)


def _tensor_files(path: str) -> dict[str, str]:
    """Map tensor name -> safetensors file, from the index when there is one."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {k: os.path.join(path, v) for k, v in weight_map.items()}
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path!r}")
    out = {}
    for f in files:
        header, _ = safetensors_io.read_header(os.path.join(path, f))
        out.update({k: os.path.join(path, f) for k in header})
    return out


class _Reader:
    """Reads single tensors by name from a folder's memory-mapped safetensors files."""

    def __init__(self, path: str):
        self.path = path
        self.files = _tensor_files(path)
        self.maps: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        file = self.files.get(name)
        if file is None:
            raise ValueError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        if file not in self.maps:
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file} not found (it holds tensor {name!r})")
            self.maps[file] = dict(safetensors_io.iter_tensors(file))
        arr = self.maps[file].get(name)
        if arr is None:
            raise ValueError(f"{file}: tensor {name!r} listed in the index but not in the file")
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(
                f"{file}: tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}"
            )
        return arr


def load_params(
    path: str,
    cfg: ModelConfig,
    shardings: Any = None,
) -> dict:
    """Read the parameters of `cfg` from a checkpoint folder, one leaf at a time.

    `shardings` is None (default device) or a pytree of jax.sharding.Sharding matching the
    parameters; each leaf is built from its host slice with make_array_from_callback.
    """
    read = _Reader(path)
    shapes = param_shapes(cfg)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    if shardings is None:
        shard_leaves = [None] * len(flat)
    else:
        try:
            shard_leaves = treedef.flatten_up_to(shardings)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"shardings do not match the parameter tree of {path!r}: {e}"
            ) from None
    out = []
    for (kp, spec), sharding in zip(flat, shard_leaves, strict=True):
        p = _key_path(kp)
        if p[0] == "layers":
            host = np.empty(spec.shape, spec.dtype)
            for i in range(cfg.num_layers):
                host[i] = _to_hf(p, read(hf_name(p, i), _hf_shape(p, spec.shape[1:])))
        else:
            # a copy: jax may otherwise alias the read-only file mapping (params would then
            # change, or crash, when the checkpoint file is rewritten in place)
            host = np.array(_to_hf(p, read(hf_name(p), _hf_shape(p, spec.shape))), spec.dtype)
        if sharding is None:
            out.append(jax.device_put(host))
        else:
            out.append(jax.make_array_from_callback(spec.shape, sharding, lambda i, h=host: h[i]))
        del host
    return jax.tree_util.tree_unflatten(treedef, out)


def from_pretrained(
    path: str,
    dtype: Any = "float32",
    *,
    param_dtype: Any = None,
    shardings: Any | Callable[[ModelConfig], Any] = None,
) -> Model:
    """Load a Hugging Face Llama/Qwen2/Qwen3 checkpoint folder (or hub id) into a redjax Model.

    dtype is the compute dtype; param_dtype (default: dtype) the stored one. `shardings` is a
    pytree of shardings for the parameters, or a function of the ModelConfig returning one.
    """
    path = hub.model_folder(path)
    dtype = jnp.dtype(dtype).name
    cfg = read_config(path, dtype=dtype, param_dtype=jnp.dtype(param_dtype or dtype).name)
    if callable(shardings):
        shardings = shardings(cfg)
    return Model(cfg, load_params(path, cfg, shardings))


def hf_tensors(params: dict, cfg: ModelConfig) -> dict[str, safetensors_io.Pending]:
    """Parameters as Hugging Face-named tensors, each gathered to the host only when fetched
    (a collective on multi-host meshes: every process fetches in the same order)."""
    out = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        p = _key_path(kp)
        if p[0] == "layers":  # one tensor per layer of the stacked leaf
            parts = [
                (hf_name(p, i), leaf.shape[1:], lambda leaf=leaf, i=i: leaf[i])
                for i in range(cfg.num_layers)
            ]
        else:
            parts = [(hf_name(p), leaf.shape, lambda leaf=leaf: leaf)]
        for name, shape, get in parts:
            fetch = lambda p=p, get=get: np.ascontiguousarray(_to_hf(p, to_host(get())))
            out[name] = safetensors_io.Pending(_hf_shape(p, shape), np.dtype(leaf.dtype), fetch)
    return out


def save_pretrained(
    model: Model,
    path: str,
    *,
    tokenizer: Any = None,
    max_shard_bytes: int = 4 << 30,
) -> None:
    """Write a folder that transformers.AutoModelForCausalLM.from_pretrained loads.

    Tensors reach the host one at a time, so the host never holds the whole model. With several
    processes, each takes part in every gather; process 0 writes.
    """
    os.makedirs(path, exist_ok=True)
    tensors = hf_tensors(model.params, model.cfg)
    if jax.process_index() != 0:
        for t in tensors.values():
            t.fetch()
        return
    write_config(model.cfg, path)
    nbytes = lambda t: int(np.prod(t.shape)) * t.dtype.itemsize
    shards: list[dict[str, safetensors_io.Pending]] = [{}]
    size = 0
    for name, t in tensors.items():
        if size and size + nbytes(t) > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes(t)
    if len(shards) == 1:
        safetensors_io.write(os.path.join(path, "model.safetensors"), shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            safetensors_io.write(os.path.join(path, fname), shard)
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(nbytes(t) for t in tensors.values())
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def peft_tensors(adapters: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """LoRA adapters (redjax.lora layout) under PEFT's names: per layer and projection,
    base_model.model.<its Hugging Face module>.lora_A.weight [r, in] and lora_B.weight [out, r]
    (torch's [out, in] layout of A and B)."""
    out = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(adapters)[0]:
        _, *mod, name = _key_path(kp)
        host = to_host(leaf)
        part = {"lora_a": "lora_A", "lora_b": "lora_B"}[name]
        for i in range(cfg.num_layers):
            key = f"base_model.model.model.layers.{i}.{LAYER_NAMES[tuple(mod)]}.{part}.weight"
            out[key] = np.ascontiguousarray(host[i].T.astype(np.float32))
    return out


def save_peft(adapters: dict, cfg: ModelConfig, spec: Any, path: str, *, base: str) -> None:
    """Write a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) that
    peft.PeftModel.from_pretrained loads onto the base model in folder `base`. `spec`: the
    run's redjax.lora.LoraSpec (PEFT's scale lora_alpha / r is the same)."""
    from redjax.lora import TARGETS

    tensors = peft_tensors(adapters, cfg)
    if jax.process_index() != 0:
        return
    os.makedirs(path, exist_ok=True)
    modules = [LAYER_NAMES[TARGETS[t]].split(".")[-1] for t in spec.targets]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    safetensors_io.write(os.path.join(path, "adapter_model.safetensors"), tensors)
