"""The KV-cached sampler against full recompute, transformers `generate`, and exact distributions."""

import math

import jax
import numpy as np
import pytest
import torch
from conftest import make_hf_checkpoint
from helpers import bench_module
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from redjax import sampler
from redjax.models import from_pretrained
from redjax.sampler import SamplingParams, sample

PROMPT_LENS = (5, 9, 3, 7, 1)  # mixed lengths: all but row 1 are left-padded
GREEDY = dict(temperature=0, top_k=0, top_p=1.0)  # greedy decoding; each test sets its length
UNTRUNCATED = dict(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=256)  # no top-k/top-p cut


def left_pad(seqs):
    width = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), bool)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = s
        mask[i, width - len(s) :] = True
    return ids, mask


def prompts(vocab, lens=PROMPT_LENS, seed=0):
    rng = np.random.default_rng(seed)
    return left_pad([rng.integers(5, vocab, n) for n in lens])


def greedy_by_recompute(model, ids, mask, n):
    """Greedy decoding by a full forward (no cache) over the whole sequence at every step."""
    b, p = ids.shape
    seq = np.zeros((b, p + n), np.int32)
    valid = np.zeros((b, p + n), bool)
    seq[:, :p], valid[:, :p] = ids, mask
    for t in range(n):
        logits = np.asarray(model(seq, valid))  # fixed shape: future slots are masked out
        seq[:, p + t] = logits[:, p + t - 1].argmax(-1)
        valid[:, p + t] = True
    return seq[:, p:]


def torch_logprobs(torch_model, ids, mask):
    """float64 log-softmax of the transformers model over left-padded sequences."""
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = torch_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    z = out.logits.double().numpy()
    return (
        z
        - z.max(-1, keepdims=True)
        - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))[..., None]
    )


def filtered_probs(logits, temperature, top_k, top_p):
    """float64 numpy reference of transformers' warpers: temperature, top-k, then top-p."""
    z = np.asarray(logits, np.float64) / temperature
    keep = np.ones(z.shape, bool)
    if 0 < top_k < len(z):
        keep &= z >= np.sort(z)[::-1][top_k - 1]
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1:
        mass, nucleus = 0.0, np.zeros(z.shape, bool)
        for i in np.argsort(-p, kind="stable"):
            if mass >= top_p:
                break
            nucleus[i] = True
            mass += p[i]
        keep &= p >= p[nucleus].min()
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


def chi2_threshold(df, z=3.9):
    """Wilson-Hilferty upper quantile of chi-square(df) at a normal z (3.9: p ~ 5e-5)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def chi2(counts, probs, n):
    """Chi-square statistic and degrees of freedom, pooling bins expected below 5."""
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1


def test_bucket():
    sizes = [sampler.bucket(n) for n in range(1, 1000)]
    assert all(s >= n for s, n in zip(sizes, range(1, 1000), strict=True))
    assert sorted(set(sizes)) == [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]


def test_greedy_matches_full_recompute(hf_checkpoint):
    path, _ = hf_checkpoint
    model = from_pretrained(path)
    ids, mask = prompts(model.cfg.vocab_size)
    n = 8
    out = sample(
        model.params, model.cfg, ids, mask,
        num_samples=2, sp=SamplingParams(**GREEDY, max_new_tokens=n), seed=0,
    )  # fmt: skip
    want = greedy_by_recompute(model, ids, mask, n)
    np.testing.assert_array_equal(out.tokens, np.repeat(want, 2, axis=0))
    assert out.mask.all() and (out.lengths == n).all() and (out.finish == "length").all()
    assert (out.logp == 0).all()


def test_greedy_matches_transformers_generate(hf_checkpoint):
    """Token for token, with an eos id that stops one row early and leaves others running."""
    path, torch_model = hf_checkpoint
    model = from_pretrained(path)
    ids, mask = prompts(model.cfg.vocab_size, seed=1)
    n = 8
    free = sample(
        model.params, model.cfg, ids, mask,
        num_samples=2, sp=SamplingParams(**GREEDY, max_new_tokens=n), seed=0,
    )  # fmt: skip
    eos = int(free.tokens[0, 3])  # row 0 stops at the first occurrence of this token
    sp = SamplingParams(**GREEDY, max_new_tokens=n, eos_ids=(eos,))
    out = sample(model.params, model.cfg, ids, mask, num_samples=2, sp=sp, seed=0)
    np.testing.assert_array_equal(out.tokens[0::2], out.tokens[1::2])
    with torch.no_grad():
        ref = torch_model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            do_sample=False, max_new_tokens=n, pad_token_id=0, eos_token_id=eos,
        ).numpy()[:, ids.shape[1] :]  # fmt: skip
    ref = np.pad(ref, ((0, 0), (0, n - ref.shape[1])))
    for r in range(len(ids)):
        hit = np.flatnonzero(ref[r] == eos)
        length = hit[0] + 1 if len(hit) else n
        assert out.lengths[2 * r] == length
        assert out.finish[2 * r] == ("stop" if len(hit) else "length")
        np.testing.assert_array_equal(out.tokens[2 * r, :length], ref[r, :length])
        assert not out.mask[2 * r, length:].any() and (out.tokens[2 * r, length:] == 0).all()
    assert out.finish[0] == "stop" and out.lengths[0] <= 4


@pytest.mark.parametrize("family", ["qwen2"])
def test_logprobs_match_forward(hf_checkpoint):
    path, torch_model = hf_checkpoint
    model = from_pretrained(path)
    ids, mask = prompts(model.cfg.vocab_size, seed=2)
    t, k, p, n, g = 0.1, 20, 0.8, 6, 2
    sp = SamplingParams(temperature=t, top_k=k, top_p=p, max_new_tokens=n)
    out = sample(model.params, model.cfg, ids, mask, num_samples=g, sp=sp, seed=3)
    full_ids = np.concatenate([np.repeat(ids, g, 0), out.tokens], axis=1)
    full_mask = np.concatenate([np.repeat(mask, g, 0), out.mask], axis=1)
    logp = torch_logprobs(torch_model, full_ids, full_mask)[:, ids.shape[1] - 1 : -1]
    want_model = np.take_along_axis(logp, out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logp_model, want_model, atol=1e-4)
    want = np.zeros_like(want_model)
    for r in range(len(out.tokens)):
        for i in range(n):
            q = filtered_probs(logp[r, i], t, k, p)
            want[r, i] = np.log(q[out.tokens[r, i]])
    np.testing.assert_allclose(out.logp, want, atol=1e-4)
    assert np.isfinite(out.logp).all() and (out.logp >= want_model - 1e-4).all()


@pytest.mark.parametrize("family", ["qwen2"])
def test_seed_reproducible(hf_checkpoint):
    path, _ = hf_checkpoint
    model = from_pretrained(path)
    ids, mask = prompts(model.cfg.vocab_size)
    sp = SamplingParams(temperature=0.5, top_k=20, top_p=0.95, max_new_tokens=6)
    run = lambda seed: sample(model.params, model.cfg, ids, mask, num_samples=2, sp=sp, seed=seed)
    a, b, c = run(5), run(5), run(6)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logp, b.logp)
    assert (a.tokens != c.tokens).mean() > 0.5
    assert (a.tokens[0] != a.tokens[1]).any()  # the G samples of one prompt differ


@pytest.mark.parametrize("family", ["qwen3"])  # qwen2's tied embeddings give a peaked softmax
@pytest.mark.parametrize("temperature,top_k,top_p", [(0.1, 0, 1.0), (0.1, 8, 1.0), (0.1, 0, 0.6)])
def test_token_frequencies_match_filtered_softmax(hf_checkpoint, temperature, top_k, top_p):
    path, torch_model = hf_checkpoint
    model = from_pretrained(path)
    ids, mask = prompts(model.cfg.vocab_size, lens=(6,), seed=4)
    n = 4000
    sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1)
    out = sample(model.params, model.cfg, ids, mask, num_samples=n, sp=sp, seed=7)
    logits = torch_logprobs(torch_model, ids, mask)[0, -1]
    probs = filtered_probs(logits, temperature, top_k, top_p)
    counts = np.bincount(out.tokens[:, 0], minlength=len(probs))
    assert counts[probs == 0].sum() == 0  # nothing outside the top-k / nucleus set
    np.testing.assert_allclose(out.logp[:, 0], np.log(probs[out.tokens[:, 0]]), atol=1e-4)
    stat, df = chi2(counts, probs, n)
    assert stat < chi2_threshold(df), (stat, df)
    # The same counts are far from a distribution that differs (unfiltered, or at T = 1).
    wrong = filtered_probs(logits, 1.0 if top_k == 0 and top_p == 1 else temperature, 0, 1.0)
    assert chi2(counts, wrong, n)[0] > chi2_threshold(chi2(counts, wrong, n)[1])


class CharTokenizer:
    """Token i decodes to one character; ids below 3 are special (dropped when skipping them)."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if skip_special_tokens and i < 3 else chr(65 + i) for i in ids)


@pytest.mark.parametrize("family", ["qwen2"])
def test_stop_on_eos_ids_and_stop_strings(hf_checkpoint, monkeypatch):
    path, _ = hf_checkpoint
    model = from_pretrained(path)
    tok = CharTokenizer()
    ids, mask = prompts(model.cfg.vocab_size, seed=5)
    n, g = 16, 2
    sp = SamplingParams(temperature=0.5, top_k=20, top_p=0.95, max_new_tokens=n)
    free = sample(model.params, model.cfg, ids, mask, num_samples=g, sp=sp, seed=1)
    assert (free.lengths == n).all()
    eos = (int(free.tokens[1, 2]), 0)  # row 1 stops at its first occurrence of the first id
    stops = tuple(tok.decode(row[3:5]) for row in np.delete(free.tokens, 1, 0))  # each row hits one

    calls = []
    decode = sampler._decode
    monkeypatch.setattr(sampler, "_decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    monkeypatch.setattr(sampler, "STOP_CHUNK", 4)
    sp = SamplingParams(
        temperature=0.5, top_k=20, top_p=0.95, max_new_tokens=n, eos_ids=eos, stop_strings=stops
    )
    out = sample(model.params, model.cfg, ids, mask, num_samples=g, sp=sp, seed=1, tokenizer=tok)

    for r, row in enumerate(free.tokens):  # reference: cut the free run at eos / a stop string
        hit = np.flatnonzero(np.isin(row, eos))
        end = hit[0] + 1 if len(hit) else n
        cut = next((t for t in range(1, n + 1) if any(s in tok.decode(row[:t]) for s in stops)), n)
        length = min(end, cut)
        assert out.lengths[r] == length
        assert out.finish[r] == ("stop" if len(hit) or cut < n else "length")
        np.testing.assert_array_equal(out.tokens[r, :length], row[:length])
        assert out.mask[r].sum() == length and (out.tokens[r, length:] == 0).all()
        text = tok.decode(row[:length], skip_special_tokens=True)
        first = min([text.find(s) for s in stops if s in text], default=len(text))
        assert out.text[r] == text[:first]
    assert out.lengths[1] <= 3 and (out.lengths <= 5).all() and (out.finish == "stop").all()
    assert not any(s in t for s in stops for t in out.text)
    assert len(calls) < (n - 1) // 4  # decoding stopped once every row finished


@pytest.mark.parametrize("family", ["qwen3"])
def test_decode_params_reused_across_calls(hf_checkpoint):
    """float32 weights sampled in bfloat16: one decode_params copy (per layer, cast once) gives
    the same rollouts as letting each sample call make its own."""
    path, _ = hf_checkpoint
    model = from_pretrained(path)
    cfg = model.cfg.replace(dtype="bfloat16")
    ids, mask = prompts(cfg.vocab_size)
    sp = SamplingParams(temperature=0.7, top_k=20, top_p=1.0, max_new_tokens=6)
    prepared = sampler.decode_params(model.params, cfg)
    assert "layers" not in prepared and "layers_0" in prepared
    assert {x.dtype.name for x in jax.tree.leaves(prepared)} == {"bfloat16"}
    assert sampler.decode_params(prepared, cfg) is prepared  # already in decode layout: no copy
    a = sample(model.params, cfg, ids, mask, num_samples=2, sp=sp, seed=1)
    b = sample(prepared, cfg, ids, mask, num_samples=2, sp=sp, seed=1)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logp, b.logp)
    np.testing.assert_array_equal(a.logp_model, b.logp_model)


def test_sharded_mesh_gives_the_same_tokens(tmp_path):
    make_hf_checkpoint(tmp_path / "m", "qwen2")
    model = from_pretrained(str(tmp_path / "m"))
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))

    def shard(x):  # output features over "tensor" where they divide, as a tensor-parallel rule
        spec = (None,) * (x.ndim - 1) + ("tensor",) if x.ndim >= 2 and x.shape[-1] % 2 == 0 else ()
        return jax.device_put(x, NamedSharding(mesh, P(*spec)))

    params = jax.tree.map(shard, model.params)
    ids, mask = prompts(model.cfg.vocab_size)  # 5 prompts x 2 samples: 10 rows on 4 data shards
    sp = SamplingParams(temperature=0.5, top_k=20, top_p=0.95, max_new_tokens=6, eos_ids=(7, 11))
    one = sample(model.params, model.cfg, ids, mask, num_samples=2, sp=sp, seed=0)
    many = sample(params, model.cfg, ids, mask, num_samples=2, sp=sp, seed=0, mesh=mesh)
    np.testing.assert_array_equal(many.tokens, one.tokens)
    np.testing.assert_array_equal(many.lengths, one.lengths)
    np.testing.assert_array_equal(many.finish, one.finish)
    np.testing.assert_allclose(many.logp, one.logp, atol=1e-5)
    np.testing.assert_allclose(many.logp_model, one.logp_model, atol=1e-5)


def test_bad_inputs_raise_clear_errors(tmp_path):
    make_hf_checkpoint(tmp_path / "m", "llama")
    model = from_pretrained(str(tmp_path / "m"))
    ids, mask = prompts(model.cfg.vocab_size)
    call = lambda ids, mask, **kw: sample(
        model.params,
        model.cfg,
        ids,
        mask,
        num_samples=1,
        sp=SamplingParams(**UNTRUNCATED, **kw),
        seed=0,
    )
    with pytest.raises(ValueError, match="left-padded"):
        call(ids, mask[:, ::-1])
    with pytest.raises(ValueError, match="empty"):
        call(ids, np.zeros_like(mask))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        call(ids, mask, eos_ids=(model.cfg.vocab_size,))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        call(ids, mask, stop_strings=("x",))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(**dict(UNTRUNCATED, top_p=0))


def test_generate_cli(tmp_path, capsys):
    from redjax.cli import main
    from redjax.tokenizer import make_char_tokenizer

    tok = make_char_tokenizer(str(tmp_path / "m"))
    make_hf_checkpoint(tmp_path / "m", "qwen2", vocab_size=len(tok))
    model = str(tmp_path / "m")
    main(
        [
            "generate",
            "--model",
            model,
            "--prompt",
            "1+1=",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "5",
        ]
    )
    printed = capsys.readouterr().out
    assert "=== prompt 1/2, sample 1/1 (" in printed and "=== prompt 2/2, sample 1/1 (" in printed
    assert "[prompt] 1+1=" in printed
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tmp_path / "nothing"), "--prompt", "x"])
    assert "does not exist" in capsys.readouterr().err


PROGRAMS = {f: getattr(sampler, f) for f in ("_prefill", "_decode", "_reshape")}  # unpatched


def ragged_rollouts(model, monkeypatch, *, features, sub_batch=0):
    """Rollouts of 5 prompts x 4 whose lengths spread (three eos ids), decoded 4 steps between
    host checks, and a log of the programs run: prefill rows, decode (rows, cache slots),
    compaction rows."""
    monkeypatch.setattr(sampler, "SEGMENTED", features)
    monkeypatch.setattr(sampler, "COMPACT", features)
    monkeypatch.setattr(sampler, "STOP_CHUNK", 4)
    log = []
    logs = {
        "_prefill": lambda a, k: ("prefill", k["rows"]),
        "_decode": lambda a, k: ("decode", *a[1].kv_mask.shape),
        "_reshape": lambda a, k: ("compact", None if a[1] is None else len(a[1])),
    }
    for name, entry in logs.items():
        run = lambda *a, _f=PROGRAMS[name], _e=entry, **k: log.append(_e(a, k)) or _f(*a, **k)
        monkeypatch.setattr(sampler, name, run)
    ids, mask = prompts(model.cfg.vocab_size, seed=6)
    sp = SamplingParams(
        temperature=1.0, top_k=30, top_p=1.0, max_new_tokens=12, eos_ids=(3, 17, 42)
    )
    out = sample(
        model.params, model.cfg, ids, mask, num_samples=4, sp=sp, seed=2, sub_batch=sub_batch
    )
    return out, log


@pytest.mark.parametrize("family", ["qwen2"])
def test_compaction_segments_and_passes_keep_every_row(hf_checkpoint, monkeypatch):
    """Decoding against a growing cache with finished rows compacted away, in passes, gives each
    row the tokens and log-probs of one full-cache, full-batch pass. Log-probs to 1e-5: a smaller
    batch or cache may change XLA's float32 reduction order (not the math)."""
    model = from_pretrained(hf_checkpoint[0])
    ref, log = ragged_rollouts(model, monkeypatch, features=False)
    assert log == [("prefill", 20), ("decode", 20, 16 + 16)]  # every step reads the whole budget
    assert len(set(ref.lengths)) >= 4 and ref.lengths.min() <= 4 and ref.lengths.max() == 12
    out, log = ragged_rollouts(model, monkeypatch, features=True, sub_batch=12)
    for field in ("tokens", "mask", "lengths", "finish"):
        np.testing.assert_array_equal(getattr(out, field), getattr(ref, field))
    np.testing.assert_allclose(out.logp, ref.logp, atol=1e-5)
    np.testing.assert_allclose(out.logp_model, ref.logp_model, atol=1e-5)
    # Passes of 3 and 2 prompts; each starts on prompt 16 + steps 1-4 (bucketed to 24 slots) and
    # grows to 32; the first pass, 4 of its 12 rows done by step 5, goes on in 8 rows.
    second = log.index(("prefill", 8))
    assert log[0] == ("prefill", 12) and ("compact", 8) in log[:second]
    for part in (log[:second], log[second:]):
        slots = [e[2] for e in part if e[0] == "decode"]
        assert slots[0] == 24 and slots[-1] == 32 and slots == sorted(slots)
    assert ("decode", 8, 32) in log[:second] and ("decode", 12, 32) not in log


def test_rows_per_pass_from_memory():
    """Rows per pass from free device memory: per row twice the KV cache, the token buffers,
    float32 logits and one layer's prefill; None (CPU) keeps every row in one pass."""
    cfg = sampler.ModelConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, dtype="bfloat16",
    )  # fmt: skip
    kv = 2 * 2 * 96 * 2 * 16 * 2  # k and v, 2 layers, 96 slots, 2 heads x 16, bf16
    row = 2 * kv + 3 * 4 * 64 + 16 * 1000 + 32 * (4 * 64 + 3 * 128 * 2) + 4 * 4 * 32 * 32
    assert sampler.rows_per_pass(cfg, 512, 96, None, prompt_len=32) == 512
    assert sampler.rows_per_pass(cfg, 512, 96, 10 * row, prompt_len=32, safety=1.0) == 10
    assert sampler.rows_per_pass(cfg, 512, 96, 10 * row, prompt_len=32, safety=0.5) == 5
    assert sampler.rows_per_pass(cfg, 512, 96, 10 * row, prompt_len=32, shards=4) == 32
    assert sampler.rows_per_pass(cfg, 512, 96, 10**12, prompt_len=32) == 512
    assert sampler.rows_per_pass(cfg, 512, 96, 1, prompt_len=32) == 1


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="bounds from XLA CPU's cost model")
def test_decode_step_reads_the_cache_in_place():
    """The bytes a compiled decode step accesses (XLA's cost analysis) grow by under 3 per byte
    of KV cache: the attention reads the heads-major cache in place (2.3 here), where the
    [rows, slots, kv_heads, head_dim] layout had XLA copy it at every step first (4.3)."""
    from redjax.models import init_params

    cfg = sampler.ModelConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
        num_kv_heads=2, head_dim=8,
    )  # fmt: skip
    params = jax.eval_shape(lambda: init_params(cfg))  # compiled only
    step_bytes = lambda slots: bench_module("sampler").decode_bytes(params, cfg, 3, 5, slots, 8)
    cache = lambda slots: 2 * cfg.num_layers * 3 * slots * cfg.num_kv_heads * cfg.head_dim * 4
    slope = (step_bytes(1024) - step_bytes(256)) / (cache(1024) - cache(256))
    assert 1 <= slope < 3, slope


def test_decode_layouts_match_the_trained_layout(tmp_path):
    """The sampler's layouts (q/k/v and gate/up fused; kernels stored [out, in]) give the logits
    of the trained one, over a prefill into the cache and at the next step, and the same greedy
    rollouts; the trained parameters are left as they were."""
    from redjax.models.transformer import (
        forward,
        fuse_projections,
        init_cache,
        transpose_kernels,
        unstack_layers,
    )

    make_hf_checkpoint(tmp_path, "qwen2", tie_word_embeddings=False)  # q/k/v biases, an lm_head
    model = from_pretrained(str(tmp_path))
    cfg = model.cfg
    layers = unstack_layers(model.params)
    fused = fuse_projections(layers)
    attn, mlp = fused["layers_0"]["attn"], fused["layers_0"]["mlp"]
    h, kv, hd, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    assert set(attn) == {"qkv", "o"} and attn["qkv"]["kernel"].shape == (d, (h + 2 * kv) * hd)
    assert attn["qkv"]["bias"].shape == ((h + 2 * kv) * hd,) and set(mlp) == {"gate_up", "down"}
    flipped = transpose_kernels(fused)
    assert flipped["layers_0"]["attn"]["qkv"]["kernel_t"].shape == ((h + 2 * kv) * hd, d)
    assert flipped["layers_0"]["mlp"]["down"]["kernel_t"].shape == (d, cfg.intermediate_size)
    assert flipped["lm_head"]["kernel_t"].shape == (cfg.vocab_size, d)
    assert set(layers["layers_0"]["attn"]) == {"q", "k", "v", "o"}  # inputs untouched
    assert set(fused["lm_head"]) == {"kernel"}
    ids, mask = prompts(cfg.vocab_size)

    @jax.jit
    def logits(params):  # a full sequence; the next token through the cache
        cache = init_cache(cfg, len(ids), ids.shape[1] + 1)
        full, cache = forward(params, cfg, ids, mask=mask, cache=cache)
        return full, forward(params, cfg, ids[:, :1] + 1, cache=cache)[0]

    want = logits(layers)
    for layout in (fused, transpose_kernels(layers), flipped):
        for got, ref in zip(logits(layout), want, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
    sp = SamplingParams(**GREEDY, max_new_tokens=8)
    runs = [
        sample(sampler.decode_params(model.params, cfg, transpose=t), cfg, ids, mask,
               num_samples=1, sp=sp, seed=0)
        for t in (False, True)
    ]  # fmt: skip
    np.testing.assert_array_equal(runs[0].tokens, runs[1].tokens)
    np.testing.assert_allclose(runs[0].logp_model, runs[1].logp_model, atol=1e-5)
    assert sampler._free_bytes() is None  # CPU: no memory_stats, so sample makes one pass
    sp = SamplingParams(**UNTRUNCATED)
    with pytest.raises(ValueError, match="sub_batch must be >= 0"):
        sample(None, cfg, np.ones((1, 2)), None, num_samples=1, sp=sp, seed=0, sub_batch=-1)
