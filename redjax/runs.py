"""Run folders: reading a model out of one (for `redjax generate` / `eval`) and exporting it.

A run folder (made by `redjax train`) holds config.yaml (the resolved config), model/ (config
and tokenizer) and checkpoints/ (Orbax). A Hugging Face folder (config.json) is read as is.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from redjax import config, hub

# Keys that say how a run is looked after (where and how often it saves, logs, samples, how
# its work is laid out), not what it trains: resuming may change them.
RESUMABLE = (
    "train.run_dir", "train.save_every", "train.keep", "train.log_every",
    "train.max_skipped_steps", "train.extend", "train.report_to", "eval.every",
    "eval.samples_every", "eval.num_samples", "rollout.sub_batch", "reward.workers", "reward.timeout",
    "mesh.data", "mesh.fsdp", "mesh.tensor",
)  # fmt: skip


def flat(d: dict, prefix: str = "") -> dict:
    """A nested config dict as {"section.key": value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix and k == "fields"):  # data.fields is a value
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume(cfg: config.Config, saved: dict | None) -> int:
    """The length the run's schedules were built for, checking that `cfg` may resume the run a
    checkpoint's host state `saved` describes (None: a new run). A config that differs in a key
    that changes training is refused in one line naming the keys; a changed train.steps needs
    train.extend (the schedules keep their length)."""
    if saved is None:
        return cfg.train.steps
    step, where = int(saved["step"]), cfg.train.run_dir
    if "config" not in saved:  # a checkpoint written before configs were saved with it
        return cfg.train.steps
    new = flat(config.to_dict(cfg))
    # a key added since the run was saved: the run had its default (new keys are off by default)
    old = {**flat(config.to_dict(config.Config())), **flat(saved["config"])}
    differ = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    changed = [k for k in differ if k not in RESUMABLE and k != "train.steps"]
    if changed:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"{where} holds a run at step {step} made with another config ({shown}): set "
            "train.run_dir to a new folder for a new run, or resume with the saved values"
        )
    length = int(saved.get("schedule_steps", old["train.steps"]))
    if cfg.train.steps == old["train.steps"]:
        return length
    if cfg.train.steps < step:
        raise ValueError(f"train.steps={cfg.train.steps} is below {where}'s step {step}")
    if not cfg.train.extend:
        raise ValueError(
            f"train.steps: {old['train.steps']} -> {cfg.train.steps} for {where} (at step "
            f"{step}): add train.extend=true to continue this run (the lr and lambda schedules "
            f"keep their {length}-step length, the lr stays at its final value), or set "
            "train.run_dir to a new folder for a new run"
        )
    return length


def is_run_folder(path: str) -> bool:
    """Whether `path` is a redjax run folder (model/ and checkpoints/ beside config.yaml)."""
    return all(os.path.isdir(os.path.join(path, d)) for d in ("model", "checkpoints"))


def run_settings(cfg: config.Config) -> dict:
    """How a run formatted prompts and judged answers, so evaluation matches its training:
    "reward_fns" is the run's entry that decides correctness, alone at weight 1."""
    from redjax.rewards.combine import section_entries

    d = cfg.data
    decides = next(e for e in section_entries(cfg.reward) if e.correct)
    return {
        "prompt_suffix": d.prompt_suffix,
        "system": d.system,
        "chat": d.chat,
        "reward_fns": [{"fn": decides.fn, "weight": 1.0, "correct": True, **decides.params}],
        "reward_extract": cfg.reward.extract,
    }


def load_model(path: str, dtype: str = "float32", step: int | None = None) -> tuple[Any, Any, dict]:
    """(Model, tokenizer, run settings) from a Hugging Face folder (or hub id) or a run folder;
    a run folder's parameters come from its latest (or the given) checkpoint, a LoRA run's
    adapters merged into their base; its settings from its config.yaml (a Hugging Face folder:
    the config's defaults)."""
    from redjax.models import from_pretrained
    from redjax.tokenizer import load_tokenizer

    path = hub.model_folder(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "config.json")):
        # a Hugging Face folder: prompts formatted and answers scored as the config's defaults
        return from_pretrained(path, dtype), load_tokenizer(path), run_settings(config.Config())
    run = read_run(path, dtype, step)
    return run.model(), load_tokenizer(os.path.join(path, "model")), run_settings(run.cfg)


@dataclasses.dataclass
class SavedRun:
    """What a run folder's checkpoint holds: the trained parameters (the whole model, or its
    LoRA adapters) and, for LoRA, the folder of the frozen base they sit on."""

    cfg: config.Config
    model_cfg: Any  # redjax.models.ModelConfig
    params: Any
    base_dir: str | None  # LoRA: the base's Hugging Face folder; None: full fine-tuning

    def model(self) -> Any:
        """The trained policy as a Model: with LoRA, W + (alpha / r) A B in float32, stored in
        the model's dtype."""
        from redjax import lora
        from redjax.models import Model
        from redjax.models.hf import load_params

        if self.base_dir is None:
            return Model(self.model_cfg, self.params)
        base = load_params(self.base_dir, self.model_cfg)
        merged = lora.merge(lora.join(base, self.params), self.cfg.lora.alpha)
        return Model(self.model_cfg, merged)


def read_run(path: str, dtype: str = "float32", step: int | None = None) -> SavedRun:
    """The latest (or given) checkpoint of a run folder; a LoRA run's base is the folder its
    checkpoint names (model.path, or the run's model/ for a base trained from scratch)."""
    from redjax import lora
    from redjax.checkpoint import Checkpoints
    from redjax.models import param_shapes, read_config

    if not is_run_folder(path):
        raise FileNotFoundError(
            f"{path!r} is neither a Hugging Face model folder (no config.json) nor a redjax run "
            "folder (no model/ and checkpoints/)"
        )
    model_dir = os.path.join(path, "model")
    run_cfg = config.load(os.path.join(path, "config.yaml"))
    model_cfg = read_config(model_dir, dtype=dtype, param_dtype=dtype)
    spec = lora.LoraSpec.from_config(run_cfg.lora)
    ckpts = Checkpoints(os.path.join(path, "checkpoints"), keep=run_cfg.train.keep)
    try:
        if spec is None:
            return SavedRun(
                run_cfg, model_cfg, ckpts.restore_params(param_shapes(model_cfg), step), None
            )
        adapters = ckpts.restore_params(lora.adapter_shapes(model_cfg, spec), step)
        saved = ckpts.saved_host() or {}
    finally:
        ckpts.close()
    base_dir = saved.get("base") or base_folder(run_cfg, path)
    if not os.path.isfile(os.path.join(base_dir, "config.json")):
        raise FileNotFoundError(f"{path}: its LoRA base {base_dir!r} is not a model folder")
    return SavedRun(run_cfg, model_cfg.replace(lora_alpha=spec.alpha), adapters, base_dir)


def base_folder(cfg: config.Config, run_dir: str) -> str:
    """The Hugging Face folder of a LoRA run's frozen base: model.path (a hub id resolved), or
    for a model trained from scratch the run's model/."""
    path = hub.model_folder(cfg.model.path) if cfg.model.path else os.path.join(run_dir, "model")
    return os.path.abspath(path)


def export(run_dir: str, out: str, step: int | None = None, peft: str | None = None) -> None:
    """`redjax export`: a run's parameters (latest or given step) as a Hugging Face folder, a
    LoRA run's adapters merged in, whose generation_config.json ends generations at the ids
    redjax's sampler stops at; with `peft`, the adapters also as a PEFT adapter folder. A
    Hugging Face folder or hub id is written out as it is."""
    from redjax import lora
    from redjax.models import save_pretrained
    from redjax.models.hf import save_peft
    from redjax.tokenizer import eos_ids, load_tokenizer

    path = hub.model_folder(run_dir)
    if os.path.isfile(os.path.join(path, "config.json")):
        if peft is not None:
            raise ValueError(f"--peft: {run_dir} is a model folder, not a LoRA run: no adapters")
        model, tokenizer, _ = load_model(path)
    else:
        run = read_run(path, step=step)
        if peft is not None:
            if run.base_dir is None:
                raise ValueError(
                    f"--peft: {run_dir} trained every weight (lora.rank=0): no adapters"
                )
            spec = lora.LoraSpec.from_config(run.cfg.lora)
            save_peft(run.params, run.model_cfg, spec, peft, base=run.base_dir)
            print(f"wrote the adapters of {run_dir} to {peft}")
        tokenizer, model = load_tokenizer(os.path.join(path, "model")), run.model()
    model.cfg = model.cfg.replace(generation_eos=tuple(eos_ids(tokenizer, model.cfg)))
    save_pretrained(model, out, tokenizer=tokenizer)
    print(f"exported {run_dir} to {out}")
