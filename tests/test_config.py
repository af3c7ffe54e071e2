"""Config: defaults, YAML + base chain + dotted overrides, one-line errors naming the key."""

import subprocess
import sys

import pytest

from redjax import config


def test_default_file_and_overrides():
    cfg = config.load(None, ["rollout.group_size=4", "optim.lr=3e-3", "red.shaping_gamma=null"])
    assert cfg.rollout.group_size == 4
    assert cfg.optim.lr == pytest.approx(3e-3)  # YAML 1.1 reads 3e-3 as a string
    assert cfg.red.shaping_gamma is None
    assert cfg.data.train == "builtin"


def test_red_rule_entropy_change_and_ext_agg():
    cfg = config.load(None)
    assert (cfg.red.rule, cfg.red.entropy_change, cfg.red.ext_agg) == (
        "ratio",
        "drift",
        "token-mean",
    )
    over = ["red.rule=sign", "red.entropy_change=probe", "red.ext_agg=seq-mean-token-mean"]
    cfg = config.load(None, over)
    assert (cfg.red.rule, cfg.red.entropy_change, cfg.red.ext_agg) == (
        "sign",
        "probe",
        "seq-mean-token-mean",
    )


def test_base_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("rollout:\n  prompts: 7\nrl:\n  eps_low: 0.1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nrollout:\n  prompts: 9\n")
    cfg = config.load(str(tmp_path / "b.yaml"))
    assert (cfg.rollout.prompts, cfg.rl.eps_low) == (9, 0.1)


def test_baselines_load():
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
    files = glob.glob(os.path.join(root, "baselines", "*.yaml"))
    assert len(files) == 6
    names = {os.path.basename(f): config.load(f) for f in files}
    assert {cfg.algo for cfg in names.values()} == set(config.ALGOS)
    for name, cfg in names.items():
        assert cfg.algo == name.removesuffix(".yaml")
    # The presets reproduce the baselines' settings as they were spelled out before `algo`.
    assert names["luffy.yaml"].red.shaping_gamma == pytest.approx(0.1)
    luffy = names["luffy.yaml"].red
    assert (luffy.shift, luffy.lam, luffy.lambda0, luffy.offline_in_group) == (
        "one",
        "fixed",
        1.0,
        True,
    )
    sft = names["sft.yaml"].red
    assert (sft.shift, sft.lam, sft.lambda0, sft.offline_in_group) == ("zero", "fixed", 1.0, False)
    assert (names["fixed_mix.yaml"].red.shift, names["fixed_mix.yaml"].red.lam) == ("zero", "fixed")
    assert names["sft_then_grpo.yaml"].red.sft_steps == 100
    assert names["red.yaml"].red == config.RedCfg(lambda_min=0.5)  # default.yaml's floor
    for f in glob.glob(os.path.join(root, "real", "*.yaml")):
        config.load(f)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "rollout.grop_size=4",
            "unknown key 'rollout.grop_size'; allowed: filter_groups, group_size",
        ),
        ("rl.agg=mean", "rl.agg: 'mean' is not one of token-mean, seq-mean-token-mean, constant"),
        ("rollout.prompts=many", "rollout.prompts: expected int, got 'many'"),
        ("red.probe_fraction=0", "red.probe_fraction must be in (0, 1]"),
        ("rollout", "override 'rollout' is not of the form key=value"),
        ("rollout.online=false", "rollout.online was removed: set algo instead (algo: sft"),
        ("red.offline=false", "red.offline was removed: set algo instead (algo: grpo"),
        ("algo=ppo", "algo: 'ppo' is not one of red, grpo, sft, sft_then_grpo, luffy, fixed_mix"),
        ("red.sft_steps=5", "red.sft_steps is read only by algo: sft_then_grpo"),
        ("algo=sft_then_grpo", "algo sft_then_grpo needs 0 < red.sft_steps < train.steps"),
        ("red.rule=pid", "red.rule: 'pid' is not one of sign, ratio"),
        ("red.entropy_change=both", "red.entropy_change: 'both' is not one of probe, drift"),
        ("red.ext_agg=constant", "red.ext_agg: 'constant' is not one of token-mean, seq-mean-"),
        (
            "train.report_to=[tensorboard,mlflow]",
            "train.report_to[1]: 'mlflow' is not one of tensorboard, wandb",
        ),
        ("train.report_to=3", "train.report_to: expected a list, got 3"),
        ("train.report_to={a: 1}", "train.report_to: expected a list, got {'a': 1}"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ValueError) as e:
        config.load(None, [override])
    assert message in str(e.value)


def test_cli_error_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "redjax.cli", "train", "rl.eps_low=x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "redjax: error: rl.eps_low: expected float, got 'x'"
    missing = subprocess.run(
        [sys.executable, "-m", "redjax.cli", "train", "nope.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert missing.stderr.strip() == "redjax: error: config file 'nope.yaml' not found"


def test_removed_keys_at_their_old_default_are_accepted():
    """A run folder's config.yaml from before `algo` (rollout.online: true, red.offline: true)
    still loads; only a value that asked for another method is an error."""
    cfg = config.load(None, ["rollout.online=true", "red.offline=true"])
    assert cfg.algo == "red"


def test_algo_presets_come_before_the_file_and_overrides(tmp_path):
    """`algo` sets its method's settings; the file and the overrides still replace any of them."""
    (tmp_path / "a.yaml").write_text("algo: luffy\nred:\n  shaping_gamma: 0.3\n")
    cfg = config.load(str(tmp_path / "a.yaml"), ["red.lambda0=2.0"])
    assert (cfg.algo, cfg.red.shift, cfg.red.shaping_gamma, cfg.red.lambda0) == (
        "luffy",
        "one",
        0.3,
        2.0,
    )
    assert config.load(str(tmp_path / "a.yaml"), ["algo=red"]).red.shift == "linear"


@pytest.mark.parametrize("algo", ["red", "grpo", "sft", "sft_then_grpo", "luffy", "fixed_mix"])
def test_phase_plan(algo):
    from redjax.algos import Plan

    then = ["red.sft_steps=3"] if "then" in algo else []
    cfg = config.load(None, [f"algo={algo}", "red.entropy_change=probe", *then])
    plan = Plan.from_config(cfg)
    phases = [(p.online, p.offline) for p in map(plan.phase, range(6))]
    want = {
        "red": [(True, True)] * 6,
        "luffy": [(True, True)] * 6,
        "fixed_mix": [(True, True)] * 6,
        "grpo": [(True, False)] * 6,
        "sft": [(False, True)] * 6,
        "sft_then_grpo": [(False, True)] * 3 + [(True, False)] * 3,
    }[algo]
    assert phases == want
    # Only where lambda adapts to the entropy changes does a step pay for the probe forward.
    assert plan.probe == plan.adapts == (algo == "red")
    drift = Plan.from_config(
        config.load(
            None,
            [f"algo={algo}", "red.entropy_change=drift"]
            + (["red.sft_steps=3"] if "then" in algo else []),
        )
    )
    assert (drift.adapts, drift.probe) == (algo == "red", False)


@pytest.mark.parametrize(
    "override, expected",
    [
        ([], ["tensorboard"]),
        (["train.report_to=[wandb, tensorboard]"], ["wandb", "tensorboard"]),
        (["train.report_to=wandb"], ["wandb"]),  # a bare override is a one-element list
        (["train.report_to=tensorboard,wandb"], ["tensorboard", "wandb"]),
        (["train.report_to=[]"], []),
    ],
)
def test_report_to_is_a_list_of_choices(override, expected):
    pytest.importorskip("wandb")
    assert config.load(None, override).train.report_to == expected


def test_report_to_from_yaml_and_resumable(tmp_path):
    pytest.importorskip("wandb")
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  report_to:\n    - wandb\n")
    assert config.load(str(path)).train.report_to == ["wandb"]
    from redjax.runs import RESUMABLE

    assert "train.report_to" in RESUMABLE  # where the logs go does not change training


def test_report_to_wandb_without_wandb_is_refused_at_load(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"pip install 'redjax\[wandb\]'"):
        config.load(None, ["train.report_to=[tensorboard, wandb]"])
    assert config.load(None, ["train.report_to=[tensorboard]"]).train.report_to == ["tensorboard"]
