"""The Flax Llama/Qwen model and HF checkpoint io, against the transformers PyTorch models."""

import copy
import functools
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from helpers import make_hf_checkpoint
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from redjax.models import (
    forward,
    from_pretrained,
    init_cache,
    param_shapes,
    read_config,
    safetensors_io,
    save_pretrained,
    unstack_layers,
)

VOCAB = 97  # helpers.TINY
VARIANTS = {
    "llama": ("llama", {}),  # llama3 rope scaling
    "qwen2": ("qwen2", {}),  # qkv bias, tied embeddings
    "qwen3": ("qwen3", {}),  # QK-norm, head_dim 32 != 64 / 4
    "llama-bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "qwen2-untied": ("qwen2", dict(tie_word_embeddings=False)),
    "llama-linear": (
        "llama",
        dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter random values, not HF's init (zero biases, unit norms, std 0.02).

    Norm scales and biases must be non-trivial for a test to see them, and q/k large enough
    that attention is peaked, so that a wrong rope, mask or position changes the logits.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.5 * noise)
            else:
                gain = 2.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(gain * noise / math.sqrt(p.shape[1]))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """checkpoint(variant) -> (folder, torch model), built once per module."""
    made = {}

    def get(name):
        if name not in made:
            kind, overrides = VARIANTS[name]
            path = tmp_path_factory.mktemp("ckpt") / name
            model = make_hf_checkpoint(path, kind, **overrides)
            randomize(model, seed=len(made))
            model.save_pretrained(str(path))
            made[name] = str(path), model
        return made[name]

    return get


def torch_logits(model, ids, attention_mask=None) -> np.ndarray:
    with torch.no_grad():
        am = None if attention_mask is None else torch.tensor(np.asarray(attention_mask, np.int64))
        return model(torch.tensor(np.asarray(ids, np.int64)), attention_mask=am).logits.numpy()


def tokens(batch: int = 3, length: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length))


def logits(model, ids, mask=None) -> np.ndarray:
    """redjax logits, always with a mask and [3, 24] tokens: one compile per config, reused."""
    return np.asarray(model(ids, np.ones(ids.shape, bool) if mask is None else mask))


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------- logits vs torch
@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(checkpoint, name):
    """Row 0 full length, rows 1 and 2 right-padded: valid positions equal torch's (1e-4)."""
    path, ref = checkpoint(name)
    model = from_pretrained(path)
    ids = tokens()
    lengths = [24, 15, 7]
    mask = np.arange(24)[None, :] < np.array(lengths)[:, None]

    got = logits(model, ids, mask)
    want = torch_logits(ref, ids, mask)
    assert np.abs(want).max() > 1.0  # the logits are not all near zero
    for row, n in enumerate(lengths):
        assert max_diff(got[row, :n], want[row, :n]) < 1e-4
        assert max_diff(got[row, :n], torch_logits(ref, ids[row : row + 1, :n])[0]) < 1e-4


def test_config_matches_transformers(checkpoint):
    for name in VARIANTS:
        path, ref = checkpoint(name)
        cfg = read_config(path)
        n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(param_shapes(cfg)))
        assert cfg.num_params == n == sum(p.numel() for p in ref.parameters()), name
    cfg = read_config(checkpoint("qwen3")[0])
    assert (cfg.arch, cfg.head_dim, cfg.qk_norm, cfg.qkv_bias) == ("qwen3", 32, True, False)
    cfg = read_config(checkpoint("qwen2")[0])
    assert (cfg.qkv_bias, cfg.o_bias, cfg.tie_embeddings) == (True, False, True)
    cfg = read_config(checkpoint("llama-bias")[0])
    assert (cfg.qkv_bias, cfg.o_bias, cfg.mlp_bias) == (True, True, True)
    assert dict(read_config(checkpoint("llama")[0]).rope_scaling)["rope_type"] == "llama3"


# ----------------------------------------------------------------------------- save and reload
@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "llama-bias", "qwen2-untied"])
def test_save_pretrained_round_trip(checkpoint, tmp_path, name):
    path, ref = checkpoint(name)
    model = from_pretrained(path)
    out = str(tmp_path / "saved")
    save_pretrained(model, out)
    assert os.listdir(out) and os.path.isfile(os.path.join(out, "model.safetensors"))

    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = tokens(seed=1)
    assert max_diff(torch_logits(back.float().eval(), ids), torch_logits(ref, ids)) < 1e-4

    again = from_pretrained(out)
    assert again.cfg == model.cfg
    jax.tree.map(np.testing.assert_array_equal, again.params, model.params)


def test_sharded_save_loads_in_both(checkpoint, tmp_path):
    path, ref = checkpoint("qwen3")
    model = from_pretrained(path)
    out = str(tmp_path / "sharded")
    save_pretrained(model, out, max_shard_bytes=40_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    assert sorted(set(weight_map.values())) == files
    for f in files:  # each shard holds exactly the tensors the index says
        header, _ = safetensors_io.read_header(os.path.join(out, f))
        assert sorted(header) == sorted(k for k, v in weight_map.items() if v == f)

    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    ids = tokens(seed=2)
    assert max_diff(torch_logits(back.float().eval(), ids), torch_logits(ref, ids)) < 1e-4
    jax.tree.map(np.testing.assert_array_equal, from_pretrained(out).params, model.params)


def test_save_holds_one_tensor_at_a_time(tmp_path):
    """save_pretrained gathers and writes tensor by tensor: the host's numpy allocations peak
    at a few tensors, not the whole model (it used to build every tensor first)."""
    import tracemalloc

    from redjax.models import Model, ModelConfig, init_params

    cfg = ModelConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=1024,
        num_layers=6,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        arch="llama",
    )
    params = init_params(cfg)
    largest = max(x[0].nbytes if x.ndim == 3 else x.nbytes for x in jax.tree.leaves(params))
    save_pretrained(Model(cfg, params), str(tmp_path / "warm"))  # compiles the slicing first
    tracemalloc.start()
    try:
        save_pretrained(Model(cfg, params), str(tmp_path / "m"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * largest, (peak, largest, 4 * cfg.num_params)
    back = from_pretrained(str(tmp_path / "m"))
    jax.tree.map(np.testing.assert_array_equal, back.params, params)


# ----------------------------------------------------------------------------- bfloat16
def test_bfloat16_compute_is_close_to_float32(checkpoint):
    path, _ = checkpoint("qwen2")
    ids = tokens(seed=3)
    want = logits(from_pretrained(path), ids)
    for kw in (dict(dtype="bfloat16"), dict(dtype="bfloat16", param_dtype="float32")):
        model = from_pretrained(path, **kw)
        param_dtype = jnp.dtype(kw.get("param_dtype", "bfloat16"))
        assert {x.dtype for x in jax.tree.leaves(model.params)} == {param_dtype}
        got = model(ids, np.ones(ids.shape, bool))
        assert got.dtype == jnp.bfloat16
        scale = np.abs(want).max()
        assert max_diff(got, want) < 0.05 * scale, (max_diff(got, want), scale)
        # bf16 keeps the model's choices: the top token agrees nearly everywhere
        assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) > 0.9


def test_bfloat16_checkpoint_loads(checkpoint, tmp_path):
    _, ref = checkpoint("llama")
    out = str(tmp_path / "bf16")
    ref16 = copy.deepcopy(ref).to(torch.bfloat16)
    ref16.save_pretrained(out)
    header, _ = safetensors_io.read_header(os.path.join(out, "model.safetensors"))
    assert {v["dtype"] for v in header.values()} == {"BF16"}

    model = from_pretrained(out)  # float32 params from bfloat16 tensors
    assert {x.dtype for x in jax.tree.leaves(model.params)} == {jnp.dtype("float32")}
    ids = tokens(seed=4)
    # the same bf16-rounded weights computed in float32 (not ref16.float(): that would also
    # keep torch's rope inv_freq buffer rounded to bfloat16)
    ref32 = copy.deepcopy(ref)
    ref32.load_state_dict({k: v.float() for k, v in ref16.state_dict().items()})
    assert max_diff(logits(model, ids), torch_logits(ref32, ids)) < 1e-4

    bf = from_pretrained(out, "bfloat16")  # bit-exact bfloat16 params
    emb = bf.params["embed"]["embedding"]
    want = ref16.model.embed_tokens.weight.detach().float().numpy().astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(emb), want)


# ----------------------------------------------------------------------------- KV cache
@functools.partial(jax.jit, static_argnames="cfg")
def _step(params, cfg, ids, mask, cache):
    return forward(params, cfg, ids, mask=mask, cache=cache)


@pytest.mark.parametrize("name", ["llama", "qwen3"])  # llama3 rope; QK-norm and wide heads
def test_kv_cache_decode_equals_full_forward(checkpoint, name):
    """Left-padded rows of lengths 24, 19, 6: prefill 8 tokens, decode the rest one by one."""
    path, ref = checkpoint(name)
    model = from_pretrained(path)
    params, cfg = model.params, model.cfg
    lengths, width, prefill = [24, 19, 6], 24, 8
    ids = tokens(seed=5)
    mask = np.arange(width)[None, :] >= width - np.array(lengths)[:, None]
    ids = np.where(mask, ids, 0)

    full = logits(model, ids, mask)
    cache = init_cache(cfg, len(lengths), slots=width + 3)
    out, cache = _step(params, cfg, ids[:, :prefill], mask[:, :prefill], cache)
    steps = [np.asarray(out)]
    for t in range(prefill, width):
        out, cache = _step(params, cfg, ids[:, t : t + 1], mask[:, t : t + 1], cache)
        steps.append(np.asarray(out))
    cached = np.concatenate(steps, axis=1)
    assert int(cache["index"]) == width
    np.testing.assert_array_equal(np.asarray(cache["mask"])[:, :width], mask)

    for row, n in enumerate(lengths):
        valid = slice(width - n, width)
        assert max_diff(cached[row, valid], full[row, valid]) < 1e-4
        assert max_diff(cached[row, valid], torch_logits(ref, ids[row : row + 1, valid])[0]) < 1e-4


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_unstacked_layers_equal_the_scan(checkpoint, name):
    """Per-layer parameters (the sampler's layout) give the scanned model's logits; cast to
    bfloat16 beforehand they give exactly what bfloat16 compute on float32 parameters gives."""
    path, _ = checkpoint(name)
    model = from_pretrained(path)
    params, cfg = model.params, model.cfg
    flat = unstack_layers(params)
    assert "layers" not in flat and sorted(k for k in flat if k.startswith("layers_")) == [
        f"layers_{i}" for i in range(cfg.num_layers)
    ]
    q = params["layers"]["attn"]["q"]["kernel"]
    np.testing.assert_array_equal(
        flat[f"layers_{cfg.num_layers - 1}"]["attn"]["q"]["kernel"], q[-1]
    )

    ids = tokens(seed=7)
    mask = np.arange(24)[None, :] < np.array([[24], [17], [9]])  # right-padded rows
    run = jax.jit(lambda p, c: forward(p, c, ids, mask=mask)[0], static_argnums=1)
    np.testing.assert_allclose(run(flat, cfg), run(params, cfg), rtol=1e-6, atol=1e-6)
    bf = cfg.replace(dtype="bfloat16")
    cast = unstack_layers(params, jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(cast)} == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_array_equal(  # same program but for the cast: bit for bit
        np.asarray(run(cast, bf.replace(param_dtype="bfloat16")), np.float32),
        np.asarray(run(flat, bf), np.float32),
    )


# ----------------------------------------------------------------------------- sharding
def test_load_onto_sharding(checkpoint):
    path, ref = checkpoint("qwen3")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("fsdp", "tensor"))

    def spec(x):
        """Last axis over 'tensor', the one before over 'fsdp', where they divide."""
        axes = [None] * len(x.shape)
        if x.shape and x.shape[-1] % 4 == 0:
            axes[-1] = "tensor"
        if len(x.shape) > 1 and x.shape[-2] % 2 == 0:
            axes[-2] = "fsdp"
        return NamedSharding(mesh, PartitionSpec(*axes))

    shardings = jax.tree.map(spec, param_shapes(read_config(path)))
    ids = tokens(seed=6)
    want = torch_logits(ref, ids)
    for arg in (shardings, lambda cfg: jax.tree.map(spec, param_shapes(cfg))):
        model = from_pretrained(path, shardings=arg)
        got = jax.tree.map(lambda x, s: x.sharding == s, model.params, shardings)
        assert all(jax.tree.leaves(got)), got
        kernel = model.params["layers"]["mlp"]["up"]["kernel"]  # [layers, 64, 96]
        assert len(kernel.addressable_shards) == 8
        assert kernel.addressable_shards[0].data.shape == (2, 32, 24)
        assert max_diff(logits(model, ids), want) < 1e-4

    with pytest.raises(ValueError, match="shardings do not match"):
        from_pretrained(path, shardings={"embed": shardings["embed"]})


# ----------------------------------------------------------------------------- user errors
def test_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/config.json not found"):
        from_pretrained(str(tmp_path / "empty"))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config.json: unsupported architecture 'gpt2'"):
        from_pretrained(str(tmp_path))


def test_unsupported_rope_type(tmp_path):
    rope = {
        "rope_type": "yarn",
        "factor": 4.0,
        "rope_theta": 1e6,
        "original_max_position_embeddings": 64,
    }
    make_hf_checkpoint(tmp_path, "qwen2", rope_parameters=rope)
    with pytest.raises(ValueError, match="unsupported rope_type 'yarn'"):
        from_pretrained(str(tmp_path))


def _rewrite_without(path: str, drop: str, change: dict | None = None) -> str:
    """Rewrite model.safetensors without tensor `drop` (and with `change` applied)."""
    file = os.path.join(path, "model.safetensors")
    tensors = {k: np.array(v) for k, v in safetensors_io.iter_tensors(file) if k != drop}
    tensors.update(change or {})
    safetensors_io.write(file, tensors)
    return file


def test_missing_and_misshaped_tensor(checkpoint, tmp_path):
    src, _ = checkpoint("llama")
    name = "model.layers.1.self_attn.k_proj.weight"
    path = str(tmp_path / "missing")
    save_pretrained(from_pretrained(src), path)
    _rewrite_without(path, drop=name)
    with pytest.raises(ValueError, match=rf"missing: tensor '{re.escape(name)}' is missing"):
        from_pretrained(path)

    file = _rewrite_without(path, drop="", change={name: np.zeros((32, 63), np.float32)})
    want = f"{file}: tensor '{name}' has shape (32, 63), expected (32, 64)"
    with pytest.raises(ValueError, match=re.escape(want)):
        from_pretrained(path)


def test_missing_tensor_in_sharded_checkpoint(checkpoint, tmp_path):
    src, _ = checkpoint("qwen2")
    path = str(tmp_path / "sharded")
    save_pretrained(from_pretrained(src), path, max_shard_bytes=40_000)
    index = os.path.join(path, "model.safetensors.index.json")
    with open(index) as f:
        data = json.load(f)
    del data["weight_map"]["model.norm.weight"]
    with open(index, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=r"sharded: tensor 'model.norm.weight' is missing"):
        from_pretrained(path)

    shard = data["weight_map"]["model.embed_tokens.weight"]
    os.remove(os.path.join(path, shard))
    with pytest.raises(FileNotFoundError, match=rf"{shard} not found .*model.embed_tokens"):
        from_pretrained(path)


def test_no_safetensors_file(checkpoint, tmp_path):
    src, _ = checkpoint("qwen3")
    path = tmp_path / "nofiles"
    path.mkdir()
    with open(os.path.join(src, "config.json")) as f:
        (path / "config.json").write_text(f.read())
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors files in .*nofiles"):
        from_pretrained(str(path))


def test_params_do_not_alias_the_checkpoint_file(checkpoint, tmp_path):
    """Loaded params are copies: rewriting the checkpoint file in place must not change them.

    The file is laid out with page-aligned tensor data, where jax's CPU device_put of a
    read-only memory map would otherwise keep pointing into the file.
    """
    src, _ = checkpoint("qwen2-untied")
    path = tmp_path / "aligned"
    save_pretrained(from_pretrained(src), str(path))
    file = path / "model.safetensors"
    tensors = {k: np.array(v) for k, v in safetensors_io.iter_tensors(str(file))}
    header, offset = {}, 0
    for name, arr in tensors.items():  # every tensor starts on a 4096-byte boundary
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += -(-arr.nbytes // 4096) * 4096
    blob = json.dumps(header).encode()
    assert len(blob) <= 4096 - 8
    blob += b" " * (4096 - 8 - len(blob))
    data = bytearray(offset)
    for name, arr in tensors.items():
        lo, hi = header[name]["data_offsets"]
        data[lo:hi] = arr.tobytes()
    file.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(data))

    model = from_pretrained(str(path))
    before = jax.tree.map(np.array, model.params)
    with open(file, "r+b") as f:  # overwrite all tensor data in place (same inode)
        f.seek(4096)
        f.write(b"\0" * offset)
    jax.tree.map(np.testing.assert_array_equal, model.params, before)
