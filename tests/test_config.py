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
    assert names["grpo.yaml"].red.offline is False
    assert names["sft.yaml"].rollout.online is False
    assert names["luffy.yaml"].red.shaping_gamma == pytest.approx(0.1)
    for f in glob.glob(os.path.join(root, "real", "*.yaml")):
        config.load(f)


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.grop_size=4", "unknown key 'rollout.grop_size'; allowed: group_size"),
        ("rl.agg=mean", "rl.agg: 'mean' is not one of token-mean, seq-mean-token-mean, constant"),
        ("rollout.prompts=many", "rollout.prompts: expected int, got 'many'"),
        ("red.probe_fraction=0", "red.probe_fraction must be in (0, 1]"),
        ("rollout", "override 'rollout' is not of the form key=value"),
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
