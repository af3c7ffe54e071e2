"""Typed configuration: every knob, its default and its allowed values, in one place.

A config is built from the dataclass defaults, then a YAML file (which may start from another
with `base: other.yaml`), then dotted `key=value` overrides. Unknown keys and bad values are rejected with one line naming the key and what is
allowed. configs/default.yaml is the embedded default run.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from redjax.algos import ALGOS as ALGOS  # the methods, each defined in redjax.algos
from redjax.algos import PRESETS
from redjax.data.sources import ALL_COLUMNS


@dataclass
class ModelCfg:
    path: str | None = None  # Hugging Face folder; None = a new model from `init` (from scratch)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"  # master weights / optimizer dtype
    remat: Literal["none", "full", "dots"] = "none"  # activation rematerialisation
    # auto: cuDNN fused on NVIDIA GPUs, Pallas Splash on TPUs, blockwise (linear memory) on CPU
    attention: Literal["auto", "xla", "cudnn", "splash", "chunked"] = "auto"
    # Shape of a model trained from scratch (only when path is None).
    arch: Literal["llama", "qwen2", "qwen3"] = "qwen2"
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 512
    tokenizer: str | None = None  # tokenizer folder; None = the model folder (or built-in chars)


@dataclass
class DataCfg:
    train: str = "builtin"  # JSONL/Parquet file(s), comma separated, or "builtin"
    test: str = "builtin"  # held-out file(s) for evaluation, or "builtin"
    # auto | default | openr1 | numina | gsm8k | math | aime | messages (redjax.data.sources), or
    # a map {prompt: COL, answer: COL, solution: COL, source: COL, system: COL}
    fields: str | dict[str, str] = "auto"
    on_error: Literal["raise", "skip"] = "raise"
    prompt_suffix: str = ""
    system: str | None = None
    chat: bool = True  # apply the tokenizer's chat template
    # The row's columns a record keeps in record["row"] for reward functions: ["*"] all of
    # them, [] none (less memory for wide exports), or names, e.g. [test_cases, level]
    row_columns: list[str] = field(default_factory=lambda: list(ALL_COLUMNS))
    max_prompt_len: int = 256  # tokens; 0 = fit the train data (redjax.data.task)
    max_offline_len: int = 1024  # tokens of a teacher trace; 0 = fit the train data
    builtin_train: int = 20000  # built-in task: problems in the train split
    builtin_test: int = 200  # built-in task: problems in the held-out split
    builtin_difficulty: Literal["easy", "medium", "hard", "long", "verbose", "noisy"] = "easy"


@dataclass
class RolloutCfg:
    prompts: int = 16  # B: prompts per iteration (global)
    group_size: int = 8  # G: rollouts per prompt
    max_new_tokens: int = 512  # 0 = data.max_offline_len (room for the teacher's traces)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    sub_batch: int = 0  # rollouts per sampler pass (whole prompts); 0 = from free device memory
    # Dynamic sampling (DAPO): drop the groups whose rewards are all equal (zero advantage) and
    # sample further prompt batches, up to max_refills, until `prompts` groups have a signal.
    filter_groups: bool = False
    max_refills: int = 3  # further batches a step may draw; 0 = filter without refilling


@dataclass
class RlCfg:
    eps_low: float = 0.2
    eps_high: float = 0.28
    agg: Literal["token-mean", "seq-mean-token-mean", "constant"] = "token-mean"
    norm_const: float | None = None  # for agg=constant (Dr.GRPO); default max_new_tokens
    std_norm: bool = True
    adv_eps: float = 1e-6
    beta_kl: float = 0.0  # k3 KL to the initial (reference) policy
    entropy_coef: float = 0.0
    gate_frac: float = 1.0  # keep only the top fraction of online tokens by entropy (80/20 rule)
    # The importance ratio: per token, or per sequence (GSPO: exp of the mean token log-ratio)
    ratio: Literal["token", "sequence"] = "token"
    dual_clip: float | None = None  # dual-clip PPO bound c > 1 for negative advantages (off)
    # DAPO's soft overlong punishment: the last overlong_buffer tokens of the budget cost up to
    # overlong_penalty reward, linearly (0 = off)
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    mask_truncated: bool = False  # rollouts cut by the budget carry no RL loss (DAPO)


@dataclass
class RedCfg:
    offline_in_group: bool = True
    shift: Literal["linear", "step", "zero", "one"] = "linear"
    tau: float = 0.5  # threshold of the step shift
    shaping_gamma: float | None = None  # LUFFY-style shaping pi/(pi+gamma) at s=1
    lam: Literal["red", "fixed", "schedule"] = "red"
    # lam=red: the rule that sets lambda's target (docs/design.md section 1)
    rule: Literal["sign", "ratio"] = "ratio"
    # where dH comes from: probe (after - before the update, on a probe subset) or drift (the
    # step-to-step change of the batch mean entropies of the loss forward)
    entropy_change: Literal["probe", "drift"] = "drift"
    # Extend term: mean over all trace tokens, or each trace's token mean then mean over traces
    ext_agg: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    lambda0: float = 1.0
    lambda_min: float = 0.05
    lambda_max: float = 5.0
    alpha: float = 0.1
    delta: float = 1e-4
    ema: float = 0.9
    lambda_warmup: int = 0  # schedule mode: warm-up steps
    probe_fraction: float = 0.25  # sequences re-scored after the update for the entropy deltas
    sft_steps: int = 0  # algo sft_then_grpo only: the first steps SFT, then GRPO


@dataclass
class RewardCfg:
    fn: str = "math"  # "math", "math_verify", "format" or a dotted path package.module:function
    extract: Literal["boxed", "any"] = "boxed"  # math answers: last \boxed{} or anywhere
    format_weight: float = 0.0  # with fn: reward = fn + format_weight * format
    think_format: bool = False  # the format reward asks for "<think>...</think>" first
    # A weighted list that replaces fn + format_weight: [{fn, weight[, correct][, keys]}]; fn:
    # math, math_verify, format, format_think, length or package.module:function; the math
    # entry (or the one marked correct: true) decides correctness (redjax.rewards.combine).
    fns: list[dict[str, Any]] = field(default_factory=list)
    workers: int = 2
    timeout: float = 5.0


@dataclass
class OptimCfg:
    lr: float = 1e-6
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at train.steps
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    micro_batches: int = 1  # gradient accumulation
    minibatches: int = 1  # sequential updates per iteration, each on 1/n of the rows (PPO-style)


# The projections LoRA can adapt (redjax.lora.TARGETS), by the model's own names.
LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down"]


@dataclass
class LoraCfg:
    rank: int = 0  # adapter rank r; 0 = off (full fine-tuning)
    alpha: float = 16.0  # the adapters' update is scaled by alpha / rank (as PEFT's lora_alpha)
    # the projections that get adapters; every other weight stays frozen
    targets: list[LoraTarget] = field(
        default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"]
    )


@dataclass
class MeshCfg:
    data: int = -1  # -1 = all remaining devices
    fsdp: int = 1
    tensor: int = 1


@dataclass
class EvalCfg:
    every: int = 50  # steps between held-out evaluations (0 = only at the end)
    problems: int = 200
    k: int = 1  # samples per problem (n): avg@k (= pass@1), pass@k, maj@k; > 1 needs temperature
    temperature: float = 0.0
    max_new_tokens: int | None = None  # default: rollout.max_new_tokens
    samples_every: int = 50  # steps between logged sample completions
    num_samples: int = 2


@dataclass
class TrainCfg:
    steps: int = 200
    seed: int = 0
    run_dir: str = "runs/default"
    save_every: int = 50
    # Resume a finished run past its steps: the lr and lambda schedules keep the length they
    # were built for (the lr stays at its final value); without it, a changed train.steps refuses.
    extend: bool = False
    keep: int = 3
    log_every: int = 1  # steps between metrics.jsonl / TensorBoard rows (the last step always)
    # Where the Logger also writes besides metrics.jsonl: tensorboard (run_dir/tb) and/or wandb
    # (pip install 'redjax[wandb]'; WANDB_MODE=offline writes run_dir/wandb with no network).
    report_to: list[Literal["tensorboard", "wandb"]] = field(
        default_factory=lambda: ["tensorboard"]
    )
    chunk: int = 1024  # tokens per chunk of the log-prob / entropy computation
    max_skipped_steps: int = 10  # stop after this many non-finite updates in a row


# Keys that `algo` replaced: a config that sets one gets an error naming the replacement.
REMOVED = {
    "rollout.online": "algo: sft trains without rollouts",
    "red.offline": "algo: grpo trains without teacher traces",
}


@dataclass
class Config:
    # The method: red | grpo | sft | sft_then_grpo | luffy | fixed_mix (redjax.algos).
    algo: Literal[ALGOS] = "red"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    rollout: RolloutCfg = field(default_factory=RolloutCfg)
    rl: RlCfg = field(default_factory=RlCfg)
    red: RedCfg = field(default_factory=RedCfg)
    reward: RewardCfg = field(default_factory=RewardCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    mesh: MeshCfg = field(default_factory=MeshCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    train: TrainCfg = field(default_factory=TrainCfg)


def default_file() -> str:
    """configs/default.yaml: beside the package in a checkout, inside it (redjax.configs) when
    installed from a wheel."""
    here = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "default.yaml")
    if os.path.isfile(here):
        return os.path.normpath(here)
    import importlib.resources

    return str(importlib.resources.files("redjax.configs") / "default.yaml")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float etc.)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(map(str, typing.get_args(tp)))
            raise ValueError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0])
    if tp is Any:  # checked where it is read (e.g. reward.fns entries, redjax.rewards.combine)
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 3e-3 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if origin is list:
        if isinstance(value, str):  # an override `key=a,b` is read as the list [a, b]
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (et,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, et) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_coerce(key, k, kt): _coerce(f"{key}.{k}", v, vt) for k, v in value.items()}
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _merge(obj: Any, data: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    for k, v in data.items():
        key = prefix + str(k)
        if key in REMOVED:
            if v is True:  # the old default: a no-op (config.yaml of runs made before `algo`)
                continue
            raise ValueError(f"{key} was removed: set algo instead ({REMOVED[key]})")
        if k not in names:
            raise ValueError(f"unknown key {key!r}; allowed: {', '.join(sorted(names))}")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            _merge(cur, v, key + ".")
        else:
            setattr(obj, k, _coerce(key, v, hints[k]))


def parse_overrides(items: list[str]) -> dict:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'} (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(
                f"override {item!r} is not of the form key=value (e.g. rl.eps_low=0.2)"
            )
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _chain(path: str, seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """The YAML files to merge, base first: a file may name another in `base:` (relative)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    if path in seen:
        raise ValueError(f"{path}: circular base: chain {' -> '.join(seen)}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return [(path, data)]
    base = os.path.join(os.path.dirname(path), base)
    return [*_chain(os.path.normpath(base), (*seen, path)), (path, data)]


def _algo(layers: list[tuple[str, dict]]) -> str:
    """The `algo` the files and overrides name (the last one wins), checked."""
    algo = "red"
    for where, data in layers:
        if "algo" in data:
            try:
                algo = _coerce("algo", data["algo"], typing.get_type_hints(Config)["algo"])
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
    return algo


def load(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- the algo's presets <- YAML file (default: the embedded default run) <-
    dotted overrides."""
    layers = [*_chain(path or default_file()), ("overrides", parse_overrides(overrides or []))]
    cfg = Config()
    _merge(cfg, PRESETS[_algo(layers)])
    for where, data in layers:
        try:
            _merge(cfg, data)
        except ValueError as e:
            raise ValueError(e if where == "overrides" else f"{where}: {e}") from None
    validate(cfg)
    return cfg


def _rl_and_lora_checks(cfg: Config) -> list[tuple[bool, str]]:
    """validate's checks of the RL loss options and the LoRA section."""
    return [
        (cfg.rl.agg != "constant" or (cfg.rl.norm_const or 0) >= 0, "rl.norm_const must be > 0"),
        (
            cfg.rl.dual_clip is None or cfg.rl.dual_clip > 1,
            f"rl.dual_clip must be > 1 (or null: off), got {cfg.rl.dual_clip}",
        ),
        (cfg.rl.overlong_buffer >= 0, "rl.overlong_buffer must be >= 0 (tokens; 0 = off)"),
        (
            cfg.rl.overlong_buffer == 0
            or not cfg.rollout.max_new_tokens  # 0: checked again once the length is fitted
            or cfg.rl.overlong_buffer < cfg.rollout.max_new_tokens,
            f"rl.overlong_buffer={cfg.rl.overlong_buffer} must be < rollout.max_new_tokens="
            f"{cfg.rollout.max_new_tokens}",
        ),
        (cfg.rl.overlong_penalty >= 0, "rl.overlong_penalty must be >= 0"),
        (cfg.lora.rank >= 0, "lora.rank must be >= 0 (0 = off: full fine-tuning)"),
        (cfg.lora.alpha > 0, "lora.alpha must be > 0 (the adapters' scale is alpha / rank)"),
        (
            cfg.lora.rank == 0 or len(cfg.lora.targets) > 0,
            "lora.targets must name at least one of q, k, v, o, gate, up, down",
        ),
    ]


def validate(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    checks = [
        (cfg.rollout.prompts >= 1, "rollout.prompts must be >= 1"),
        (cfg.rollout.group_size >= 1, "rollout.group_size must be >= 1"),
        (cfg.rollout.sub_batch >= 0, "rollout.sub_batch must be >= 0 (0 = from device memory)"),
        (cfg.rollout.temperature >= 0, "rollout.temperature must be >= 0"),
        (0 < cfg.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (cfg.rollout.max_new_tokens >= 0, "rollout.max_new_tokens must be >= 0 (0 = fit)"),
        (cfg.rollout.max_refills >= 0, "rollout.max_refills must be >= 0 (0 = no refills)"),
        (
            not cfg.rollout.filter_groups or cfg.algo != "sft",
            "rollout.filter_groups filters rollout groups: algo sft samples none",
        ),
        (
            not cfg.rollout.filter_groups or cfg.rollout.group_size >= 2,
            "rollout.filter_groups needs rollout.group_size >= 2 (one reward has no spread)",
        ),
        (cfg.data.max_prompt_len >= 0, "data.max_prompt_len must be >= 0 (0 = fit the data)"),
        (cfg.data.max_offline_len >= 0, "data.max_offline_len must be >= 0 (0 = fit the data)"),
        (0 < cfg.red.probe_fraction <= 1, "red.probe_fraction must be in (0, 1]"),
        (0 < cfg.rl.gate_frac <= 1, "rl.gate_frac must be in (0, 1]"),
        (0 <= cfg.red.ema < 1, "red.ema must be in [0, 1)"),
        (0 < cfg.red.alpha <= 1, "red.alpha must be in (0, 1]"),
        (cfg.red.lambda_min <= cfg.red.lambda_max, "red.lambda_min must be <= red.lambda_max"),
        (cfg.optim.micro_batches >= 1, "optim.micro_batches must be >= 1"),
        (cfg.optim.minibatches >= 1, "optim.minibatches must be >= 1"),
        (
            0 <= cfg.rl.eps_low < 1,
            "rl.eps_low must be in [0, 1) (the ratio's lower clip 1 - eps_low)",
        ),
        (cfg.rl.eps_high >= 0, "rl.eps_high must be >= 0 (the ratio's upper clip 1 + eps_high)"),
        (cfg.train.save_every >= 1, "train.save_every must be >= 1 (steps between checkpoints)"),
        (cfg.train.keep >= 1, "train.keep must be >= 1 (checkpoints kept)"),
        (cfg.train.chunk >= 1, "train.chunk must be >= 1 (tokens per log-prob chunk)"),
        (cfg.eval.every >= 0, "eval.every must be >= 0 (0 = only at the end)"),
        (cfg.eval.samples_every >= 0, "eval.samples_every must be >= 0 (0 = never)"),
        (cfg.eval.k >= 1, "eval.k must be >= 1 (samples per held-out problem)"),
        (
            cfg.eval.k == 1 or cfg.eval.temperature > 0,
            "eval.k > 1 at eval.temperature 0 gives identical samples: set eval.temperature",
        ),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.train.steps >= 1, "train.steps must be >= 1"),
        (cfg.train.log_every >= 1, "train.log_every must be >= 1"),
        (cfg.train.max_skipped_steps >= 1, "train.max_skipped_steps must be >= 1"),
        (
            cfg.algo != "sft_then_grpo" or 0 < cfg.red.sft_steps < cfg.train.steps,
            "algo sft_then_grpo needs 0 < red.sft_steps < train.steps",
        ),
        (
            cfg.algo == "sft_then_grpo" or cfg.red.sft_steps == 0,
            "red.sft_steps is read only by algo: sft_then_grpo",
        ),
        *_rl_and_lora_checks(cfg),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    import importlib.util

    if "wandb" in cfg.train.report_to and importlib.util.find_spec("wandb") is None:
        from redjax.logs import WANDB_MISSING

        raise ValueError(WANDB_MISSING)  # at load, before minutes of model loading
    from redjax.data.sources import check_fields
    from redjax.rewards.combine import section_entries

    try:
        check_fields(cfg.data.fields)
    except ValueError as e:
        raise ValueError(f"data.fields: {e}") from None
    section_entries(cfg.reward)  # its errors name the field: reward.fns[i].fn, ...


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (what a run actually used)."""
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
