"""A real vocabulary end to end: a byte-level BPE tokenizer with a ChatML template and
<|im_end|> as end of turn (as Qwen2.5-Instruct and SmolLM2 have), built in the test. Prompts
are tokenized as transformers' apply_chat_template; generations end at the model's end ids
(generation_config.json, several); completions whose UTF-8 characters are split across tokens
decode exactly, and are what the reward sees; an export generates in transformers as in redjax."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from helpers import DEFAULT_SYSTEM, make_bpe_tokenizer, make_chat_model, make_hf_checkpoint

from redjax import config, runs, train
from redjax.algos import RL
from redjax.data import load_records
from redjax.data.pipeline import tokenize
from redjax.generate import encode
from redjax.models import from_pretrained, read_config, save_pretrained
from redjax.rewards import Verifier
from redjax.sampler import SamplingParams, sample
from redjax.tokenizer import eos_ids, format_prompt, load_tokenizer

QUESTION = "What is 6 x 7?"
SUFFIX = "\nPut the answer in \\boxed{}."
ANSWER = "Réponse: 日π \\boxed{42}"  # 日 and π are split over several byte-level tokens
GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0)


def chat_ids(tok, messages) -> list[int]:
    """transformers' own tokenization of a chat prompt (v5 returns a BatchEncoding)."""
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def prompt_ids(tok, question: str = QUESTION, system: str | None = None) -> np.ndarray:
    """The prompt as `redjax generate` and the data pipeline make it: [1, P] token ids."""
    text = format_prompt(tok, question, suffix=SUFFIX, system=system, chat=True)
    return encode(tok, [text], special=False)[0]


def make_chain_model(path, end: str):
    """A qwen2 checkpoint over the BPE vocabulary whose greedy completion of any chat prompt is
    ANSWER then `end`: every layer adds nothing (o_proj and down_proj are zero), so the logits
    are the final norm of the last token's embedding against lm_head, whose row for the token
    after x is x's embedding (a larger dot product than any other row's). Returns (tokenizer,
    torch model, the completion's ids)."""
    tok, model = make_chat_model(path, tie_word_embeddings=False)
    start = tok("\n", add_special_tokens=False)["input_ids"]  # the generation prompt's last
    chain = [*start, *tok(ANSWER, add_special_tokens=False)["input_ids"]]
    chain.append(tok.convert_tokens_to_ids(end))
    assert len(start) == 1 and len(set(chain)) == len(chain)  # each token has one successor
    gen = torch.Generator().manual_seed(0)
    vocab, width = model.lm_head.weight.shape
    with torch.no_grad():
        embed = torch.randn(vocab, width, generator=gen)
        head = 0.1 * torch.randn(vocab, width, generator=gen)
        head[chain[1:]] = embed[chain[:-1]]
        model.model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(head)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(str(path))
    return tok, model, chain[1:]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """(folder, tokenizer, torch model): a tiny random model with the BPE tokenizer."""
    path = tmp_path_factory.mktemp("chat")
    tok, model = make_chat_model(path)
    return str(path), tok, model


@pytest.fixture(scope="module", params=["<|im_end|>", "<|endoftext|>"])
def chain_model(request, tmp_path_factory):
    """(folder, tokenizer, torch model, completion ids) of make_chain_model, ending at each of
    the two end ids generation_config.json lists."""
    path = tmp_path_factory.mktemp("chain")
    return (str(path), *make_chain_model(path, request.param))


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_chat_prompts_are_apply_chat_template(chat_model, system):
    """format_prompt and the data pipeline give apply_chat_template's text and token ids, with
    and without a system prompt (the template's default system turn when none); a trace ends
    with <|im_end|>."""
    path, tok, _ = chat_model
    tok = load_tokenizer(path)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": QUESTION + SUFFIX})
    text = format_prompt(tok, QUESTION, suffix=SUFFIX, system=system, chat=True)
    by_hand = (
        f"<|im_start|>system\n{system or DEFAULT_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}{SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text == by_hand
    assert text == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    record = {"prompt": QUESTION, "answer": "42", "solution": ANSWER}
    texts, ids, traces = tokenize([record], tok, prompt_suffix=SUFFIX, chat=True, system=system)
    assert texts == [by_hand] and ids[0].tolist() == chat_ids(tok, messages)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert traces[0].tolist() == [*tok(ANSWER, add_special_tokens=False)["input_ids"], im_end]
    assert tok.decode(traces[0][:-1]) == ANSWER


def test_chat_records_keep_their_system_turn(chat_model, tmp_path):
    """A messages record's system turn formats its prompt in place of data.system, as
    apply_chat_template formats the record's own system and user turns."""
    path, _, _ = chat_model
    tok = load_tokenizer(path)
    turns = [
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER},
    ]
    file = tmp_path / "chat.jsonl"
    file.write_text(json.dumps({"messages": turns}, ensure_ascii=False) + "\n", encoding="utf-8")
    records = load_records(str(file))
    texts, ids, traces = tokenize(records, tok, prompt_suffix="", chat=True, system="Other.")
    want = tok.apply_chat_template(turns[:2], tokenize=False, add_generation_prompt=True)
    assert texts == [want] and ids[0].tolist() == chat_ids(tok, turns[:2])
    assert tok.decode(traces[0][:-1]) == ANSWER and records[0]["answer"] == "42"


def test_a_template_that_writes_bos_gets_one(tmp_path):
    """Llama 3's way: the template writes <|begin_of_text|> and plain encoding adds it. A chat
    prompt has it once (apply_chat_template's ids), a raw prompt once too."""
    make_bpe_tokenizer(tmp_path, bos=True)
    tok = load_tokenizer(str(tmp_path))
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    messages = [{"role": "user", "content": QUESTION}]
    _, ids, _ = tokenize([{"prompt": QUESTION, "answer": "42"}], tok, prompt_suffix="",
                         chat=True, system=None)  # fmt: skip
    assert ids[0].tolist() == chat_ids(tok, messages) and ids[0].tolist().count(bos) == 1
    _, raw, _ = tokenize([{"prompt": QUESTION, "answer": "42"}], tok, prompt_suffix="",
                         chat=False, system=None)  # fmt: skip
    assert raw[0].tolist() == [bos, *tok(QUESTION, add_special_tokens=False)["input_ids"]]


def test_end_ids_come_from_generation_config(chat_model):
    """generation_config.json's eos_token_id list is the model's end ids; the sampler's stop set
    is those with the tokenizer's eos and end-of-turn tokens, inside the model's vocabulary."""
    path, tok, _ = chat_model
    im_end, text_end = (tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    cfg = read_config(path)
    assert cfg.generation_eos == (im_end, text_end)
    assert set(eos_ids(tok, cfg)) == {im_end, text_end}
    assert eos_ids(tok, cfg.replace(vocab_size=max(im_end, text_end))) == [min(im_end, text_end)]


def test_list_of_eos_ids_in_config_json_loads_and_round_trips(tmp_path):
    """A config.json whose eos_token_id is a list (Llama 3.x) loads, runs (the ids are kept
    hashable) with transformers' logits, and is written back with the same ids."""
    src, out = tmp_path / "src", tmp_path / "out"
    ref = make_hf_checkpoint(src, "llama", eos_token_id=[5, 7])
    model = from_pretrained(str(src))
    assert model.cfg.generation_eos == (5, 7)
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 9))
    want = ref(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), want, atol=1e-4)
    save_pretrained(model, str(out))
    with open(out / "config.json") as f, open(out / "generation_config.json") as g:
        assert json.load(f)["eos_token_id"] == [5, 7] and json.load(g)["eos_token_id"] == [5, 7]
    assert read_config(str(out)).generation_eos == (5, 7)


def test_sampler_stops_at_the_end_id_and_decodes_exactly(chain_model):
    """Greedy sampling from a chat prompt stops at the end id (either of generation_config's
    two), as transformers' generate does; the completion's split UTF-8 characters decode
    exactly, and the reward sees exactly tokenizer.decode of the ids before the stop."""
    path, _, _, chain = chain_model
    model, tok, _ = runs.load_model(path)
    parts = [tok.decode([i]) for i in chain]
    assert sum("\ufffd" in p for p in parts) >= 3 and "".join(parts) != ANSWER  # split bytes
    ids = prompt_ids(tok)
    sp = SamplingParams(**GREEDY, max_new_tokens=24, eos_ids=tuple(eos_ids(tok, model.cfg)))
    out = sample(model.params, model.cfg, ids, None, num_samples=1, sp=sp, seed=0, tokenizer=tok)
    assert out.lengths.tolist() == [len(chain)] and list(out.finish) == ["stop"]
    assert out.tokens[0].tolist() == chain
    assert out.text == [ANSWER] == [tok.decode(out.tokens[0, : len(chain) - 1])]
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():  # its generation_config.json: the same two end ids
        ref = torch_model.generate(
            torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
            do_sample=False, max_new_tokens=24,
        )  # fmt: skip
    assert ref[0, ids.shape[1] :].tolist() == chain

    seen = []
    reward = lambda completion, gold: float(seen.append(completion) or completion == ANSWER)
    with Verifier(reward, workers=0, timeout=5.0, format_weight=0.0, think_format=False,
                  extract="boxed") as verifier:  # fmt: skip
        batch = {"answer": ["42"], "has_offline": [False], "solution": [""], "record": [{}]}
        run = SimpleNamespace(verifier=verifier, cfg=config.Config())  # what score reads of a Run
        scores = train.score(run, train.Collected(batch, out, 1), RL)
    assert seen == [ANSWER] and scores.correct.all()
    with Verifier("math", workers=0, timeout=5.0, format_weight=0.0, think_format=False,
                  extract="boxed") as verifier:  # fmt: skip
        assert verifier.judge(out.text, ["42"]).correct.all()


def test_sampled_rollouts_decode_as_their_ids(chat_model):
    """Sampled rollouts of a random model over the real vocabulary: each text is the decode of
    its ids up to the stop, a stopped row ends at its first end id and nowhere earlier."""
    path, _, _ = chat_model
    model, tok, _ = runs.load_model(path)
    stops = tuple(eos_ids(tok, model.cfg))
    ids, mask = encode(tok, [format_prompt(tok, q, suffix="", system=None, chat=True)
                             for q in ("1 + 1?", QUESTION, "Übung")], special=False)  # fmt: skip
    sp = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=24, eos_ids=stops)
    out = sample(model.params, model.cfg, ids, mask, num_samples=8, sp=sp, seed=3, tokenizer=tok)
    for row, n, finish, text in zip(out.tokens, out.lengths, out.finish, out.text, strict=True):
        ended = np.flatnonzero(np.isin(row[:n], stops))
        assert ended.tolist() == ([n - 1] if finish == "stop" else [])
        assert finish == "stop" or n == 24
        assert text == tok.decode(row[:n], skip_special_tokens=True)
    assert (out.finish == "stop").any()  # some rows stop at an end id


def check_export(path: str, out: str) -> tuple[np.ndarray, str]:
    """Export the model folder `path` to `out`; transformers greedy on the export (its
    generation_config.json, its tokenizer's chat prompt) against redjax's sampler on `path`.
    Returns redjax's tokens and finish."""
    runs.export(path, out)
    model, tok, _ = runs.load_model(path)
    ids = prompt_ids(tok, system="Be brief.")
    sp = SamplingParams(**GREEDY, max_new_tokens=24, eos_ids=tuple(eos_ids(tok, model.cfg)))
    got = sample(model.params, model.cfg, ids, None, num_samples=1, sp=sp, seed=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": QUESTION + SUFFIX}]  # fmt: skip
    assert chat_ids(hf_tok, messages) == ids[0].tolist()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert set(np.ravel(hf.generation_config.eos_token_id).tolist()) == set(sp.eos_ids)
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
            do_sample=False, max_new_tokens=24,
        )[0, ids.shape[1] :]  # fmt: skip
    tokens = got.tokens[0, : got.lengths[0]]
    assert ref.tolist() == tokens.tolist()
    return tokens, got.finish[0]


def test_export_of_a_chain_model_stops_in_transformers_where_redjax_does(chain_model, tmp_path):
    """`redjax export`: transformers, greedy with the exported generation_config.json, ends the
    completion at the same end id as redjax (either of the two)."""
    tokens, finish = check_export(chain_model[0], str(tmp_path / "exported"))
    assert finish == "stop" and tokens.tolist() == chain_model[3]


def test_export_of_a_random_model_generates_as_redjax(chat_model, tmp_path):
    """`redjax export` of a random model: transformers' greedy tokens are redjax's (float32)."""
    tokens, finish = check_export(chat_model[0], str(tmp_path / "exported"))
    assert finish == "length" and len(tokens) == 24
