"""The task of a run: its records, its tokenizer, and the length limits that fit them.

`data.max_prompt_len`, `data.max_offline_len` and `rollout.max_new_tokens` set to 0 are fitted
to the train records: the longest formatted prompt and the longest teacher trace (with its end
token), rounded up to a multiple of 32; rollouts get the traces' room. So a first run on a
user's own JSONL keeps every record (a limit below a record drops it from training).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from typing import Any

from redjax import config
from redjax.data.builtin import make_task
from redjax.data.sources import load_records

log = logging.getLogger("redjax")
ROUND = 32  # fitted lengths are multiples of this
TASK_SEED = 0  # the built-in task's problems: one task whatever train.seed (which orders them)


def load_data(cfg: config.Config) -> tuple[list[dict], list[dict]]:
    """Train and held-out records: the built-in arithmetic task, or JSONL / Parquet files."""
    d = cfg.data

    def read(spec: str, split: str, n: int) -> list[dict]:
        if spec == "builtin":
            return make_task(n, seed=TASK_SEED, split=split, difficulty=d.builtin_difficulty)
        out = []
        for path in spec.split(","):
            out += load_records(
                path.strip(), fields=d.fields, on_error=d.on_error, row_columns=d.row_columns
            )
        return out

    train = read(d.train, "train", d.builtin_train)
    test = read(d.test, "test", d.builtin_test)[: cfg.eval.problems]
    return train, test


def load_tokenizer_for(cfg: config.Config) -> Any:
    """The model's tokenizer, or (for a model from scratch) the built-in character tokenizer."""
    from redjax.tokenizer import load_tokenizer, make_char_tokenizer

    path = cfg.model.tokenizer or cfg.model.path
    if path:
        return load_tokenizer(path)
    # Built in a folder of this process's own (hosts would race on the shared run folder);
    # process 0 saves it into the run folder afterwards.
    return make_char_tokenizer(tempfile.mkdtemp(prefix="redjax-tokenizer-"))


def unfitted(cfg: config.Config) -> bool:
    """Whether a length limit is left at 0, to be fitted to the train data."""
    d = cfg.data
    return min(d.max_prompt_len, d.max_offline_len, cfg.rollout.max_new_tokens) == 0


def tokenize_train(cfg: config.Config, records: list[dict], tokenizer: Any) -> tuple:
    """The train records tokenized as the run formats them (`pipeline.tokenize`), once: the
    lengths are fitted to them and the loader is built from them."""
    from redjax.data.pipeline import tokenize

    d = cfg.data
    return tokenize(records, tokenizer, prompt_suffix=d.prompt_suffix, chat=d.chat, system=d.system)


def fit_lengths(cfg: config.Config, tokenized: tuple) -> config.Config:
    """`cfg` with the length limits left at 0 fitted to the train records, given tokenized
    (`tokenize_train`; module doc); a ValueError names the field to set when there is nothing
    to fit it to."""
    if not unfitted(cfg):
        return cfg
    d, ro = cfg.data, cfg.rollout
    _, prompts, traces = tokenized
    up = lambda n: -(-n // ROUND) * ROUND
    trace = max(len(t) for t in traces)
    if not trace and not (d.max_offline_len and ro.max_new_tokens):
        raise ValueError(
            f"no record of data.train={d.train!r} has a solution to fit data.max_offline_len / "
            "rollout.max_new_tokens to: set them (tokens)"
        )
    data = dataclasses.replace(
        d,
        max_prompt_len=d.max_prompt_len or up(max(len(p) for p in prompts)),
        max_offline_len=d.max_offline_len or up(trace),
    )
    rollout = dataclasses.replace(ro, max_new_tokens=ro.max_new_tokens or data.max_offline_len)
    fitted = dataclasses.replace(cfg, data=data, rollout=rollout)
    config.validate(fitted)  # the checks that involve the fitted lengths (rl.overlong_buffer)
    log.info(
        "lengths fitted to %d train records: data.max_prompt_len=%d data.max_offline_len=%d "
        "rollout.max_new_tokens=%d",
        len(prompts), data.max_prompt_len, data.max_offline_len, rollout.max_new_tokens,
    )  # fmt: skip
    return fitted


def scratch_note(cfg: config.Config, records: list[dict]) -> None:
    """One line for a first run on a user's own data with a model from scratch: what it can
    learn, and which settings to change for more."""
    if cfg.model.path or cfg.data.train == "builtin":
        return
    per_step = cfg.rollout.prompts
    log.info(
        "a model from scratch (model.hidden_size=%d, model.num_layers=%d) learns short, regular "
        "worked solutions in a few hundred steps (train.steps=%d: %.1f epochs of %d records at "
        "rollout.prompts=%d); for free-form reasoning set model.path to a pretrained model",
        cfg.model.hidden_size, cfg.model.num_layers, cfg.train.steps,
        cfg.train.steps * per_step / max(len(records), 1), len(records), per_step,
    )  # fmt: skip
