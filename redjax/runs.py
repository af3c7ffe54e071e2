"""Run folders: reading a model out of one (for `redjax generate` / `eval`) and exporting it.

A run folder (made by `redjax train`) holds config.yaml (the resolved config), model/ (config
and tokenizer) and checkpoints/ (Orbax). A Hugging Face folder (config.json) is read as is.
"""

from __future__ import annotations

import os
from typing import Any

from redjax import config


def is_run_folder(path: str) -> bool:
    """Whether `path` is a redjax run folder (model/ and checkpoints/ beside config.yaml)."""
    return all(os.path.isdir(os.path.join(path, d)) for d in ("model", "checkpoints"))


def run_settings(cfg: config.Config) -> dict:
    """How a run formatted prompts and scored answers, so evaluation matches its training."""
    d = cfg.data
    return {
        "prompt_suffix": d.prompt_suffix,
        "system": d.system,
        "chat": d.chat,
        "reward_fn": cfg.reward.fn,
        "reward_extract": cfg.reward.extract,
    }


def load_model(path: str, dtype: str = "float32", step: int | None = None) -> tuple[Any, Any, dict]:
    """(Model, tokenizer, run settings) from a Hugging Face folder or a run folder; a run
    folder's parameters come from its latest (or the given) checkpoint, its settings from its
    config.yaml (a Hugging Face folder: the config's defaults)."""
    from redjax.checkpoint import Checkpoints
    from redjax.models import Model, from_pretrained, param_shapes, read_config
    from redjax.tokenizer import load_tokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "config.json")):
        # a Hugging Face folder: prompts formatted and answers scored as the config's defaults
        return from_pretrained(path, dtype), load_tokenizer(path), run_settings(config.Config())
    if not is_run_folder(path):
        raise FileNotFoundError(
            f"{path!r} is neither a Hugging Face model folder (no config.json) nor a redjax run "
            "folder (no model/ and checkpoints/)"
        )
    model_dir = os.path.join(path, "model")
    run_cfg = config.load(os.path.join(path, "config.yaml"))
    model_cfg = read_config(model_dir, dtype=dtype, param_dtype=dtype)
    ckpts = Checkpoints(os.path.join(path, "checkpoints"), keep=run_cfg.train.keep)
    try:
        params = ckpts.restore_params(param_shapes(model_cfg), step)
    finally:
        ckpts.close()
    return Model(model_cfg, params), load_tokenizer(model_dir), run_settings(run_cfg)


def export(run_dir: str, out: str, step: int | None = None) -> None:
    """`redjax export`: a run's parameters (latest or given step) as a Hugging Face folder."""
    from redjax.models import save_pretrained

    model, tokenizer, _ = load_model(run_dir, step=step)
    save_pretrained(model, out, tokenizer=tokenizer)
    print(f"exported {run_dir} to {out}")
