"""Runs a user can trust: one run per folder, rows as wide as the answers, the scored policy is
the sampled one, correctness apart from reward, a seed that changes only the seed, and a loop
whose learning signal has the right sign."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import _reward_plugins
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, VERIFIER, tiny_run

from redjax import cli, config, runs, sampler, sharding, step, train
from redjax.models import ModelConfig, init_params
from redjax.rows import make_rows
from redjax.shapes import response_width

TINY = tiny_run(
    8, 8, "eval.samples_every=0", "reward.workers=0", "train.save_every=1000",
    "optim.warmup_steps=0",
)  # fmt: skip


def metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def fails(argv: list[str], capsys) -> str:
    """The one line `redjax` prints for a user mistake (exit 2), after its progress lines."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("redjax: error:"), err
    return err.splitlines()[-1]


# ----------------------------------------------------------------------------- run folders
def test_one_run_per_folder(tmp_path, monkeypatch, capsys):
    """The README's commands in order give separate runs; a resume with a changed key is refused
    naming it; a longer run needs train.extend and keeps the schedule's length."""
    monkeypatch.chdir(tmp_path)
    cli.main(["train", *TINY, "train.steps=2"])
    cli.main(["train", os.path.join(ROOT, "configs/baselines/grpo.yaml"), *TINY, "train.steps=2"])
    grpo = metrics("runs/grpo")
    assert [r["step"] for r in grpo] == [1, 2] and [r["step"] for r in metrics("runs/default")]
    assert config.load("runs/grpo/config.yaml").algo == "grpo"
    assert config.load("runs/default/config.yaml").algo == "red"
    assert all(r["tokens_off"] == 0 for r in grpo)  # GRPO trained on rollouts alone

    err = fails(["train", *TINY, "train.steps=2", "rl.eps_high=0.3"], capsys)
    assert "rl.eps_high: 0.28 -> 0.3" in err and "train.run_dir" in err
    err = fails(["train", *TINY, "train.steps=3"], capsys)
    assert "train.steps: 2 -> 3" in err and "train.extend=true" in err
    cli.main(["train", *TINY, "train.steps=3", "train.extend=true"])
    # The extra step runs at the 2-step schedule's final learning rate.
    rows = metrics("runs/default")
    assert [r["step"] for r in rows] == [1, 2, 3]
    o = config.load("runs/default/config.yaml").optim
    final = step.learning_rate(o, 2)(2)
    np.testing.assert_allclose(rows[-1]["lr"], final, rtol=1e-6)
    np.testing.assert_allclose(final, o.lr * o.min_lr_ratio, rtol=1e-6)


def test_readme_keys_parse():
    """Every dotted key the README or `redjax --help` shows is a key of the config, and every
    shipped config loads into a run folder of its own."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    text += cli.parser().format_help()
    for sub in ("train", "plan"):
        text += cli.parser()._subparsers._group_actions[0].choices[sub].format_help()
    shown = set(re.findall(r"\b([a-z_]+\.[a-z_]+=[^\s`)]+)", text))
    assert {"rollout.group_size=8", "rl.eps_high=0.3"} <= shown, shown
    for item in shown:
        config.load(None, [item.replace("FOLDER", "x")])  # raises on an unknown key
    folders = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "configs")):
        for name in files:
            if name.endswith(".yaml"):
                path = os.path.join(dirpath, name)
                folders.setdefault(config.load(path).train.run_dir, []).append(path)
    assert all(len(v) == 1 for v in folders.values()), folders


def test_resume_check_names_every_changed_key():
    base = config.load(None, ["train.steps=10"])
    saved = {"step": 4, "config": config.to_dict(base)}
    assert runs.check_resume(base, saved) == 10
    other = config.load(None, ["train.steps=10", "rl.eps_low=0.1", "data.fields=gsm8k"])
    with pytest.raises(ValueError, match=r"data.fields: 'auto' -> 'gsm8k'; rl.eps_low"):
        runs.check_resume(other, saved)
    moved = config.load(None, ["train.steps=10", "train.run_dir=elsewhere", "eval.every=5"])
    assert runs.check_resume(moved, saved) == 10  # how a run is looked after may change
    longer = config.load(None, ["train.steps=20", "train.extend=true"])
    assert runs.check_resume(longer, {**saved, "schedule_steps": 10}) == 10
    with pytest.raises(ValueError, match="below"):
        runs.check_resume(config.load(None, ["train.steps=3", "train.extend=true"]), saved)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.save_every=0", "train.save_every"),
        ("optim.minibatches=0", "optim.minibatches"),
        ("rl.eps_low=1.2", "rl.eps_low"),
        ("rl.eps_high=-0.1", "rl.eps_high"),
        ("train.keep=0", "train.keep"),
        ("data.fields=questions", "data.fields"),
        ("data.fields={prompt: q}", "data.fields"),
    ],
)
def test_bad_values_name_their_key(override, key, capsys):
    assert key in fails(["train", override], capsys)


def test_field_map_from_yaml(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        json.dumps({"question": "1+1?", "final_answer": "2", "generation": "\\boxed{2}"})
    )
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        f"data:\n  train: {path}\n  fields: {{prompt: question, answer: final_answer, "
        "solution: generation}\n"
    )
    cfg = config.load(str(yaml_file))
    records, _ = train.load_data(cfg)
    assert records[0]["prompt"] == "1+1?" and records[0]["solution"] == "\\boxed{2}"


# ----------------------------------------------------------------------------- widths, budgets
def test_a_5k_budget_trains(tmp_path):
    """No 4096 cap: a 5000-token budget trains, every step's rows as wide as its longest
    rollout (traces here are under 32 tokens), bucketed."""
    run_dir = str(tmp_path / "run")
    train.run(
        None,
        [*TINY, "rollout.prompts=2", "rollout.group_size=2", "rollout.max_new_tokens=5000",
         "data.max_offline_len=5000", "model.max_position_embeddings=8192", "train.steps=1",
         "eval.max_new_tokens=16",
         f"train.run_dir={run_dir}"],
    )  # fmt: skip
    for r in metrics(run_dir):
        longest = int(r["response_length_max"])
        want = response_width(longest, 5000) if longest > 32 else None
        assert r["row_width"] == want if want else r["row_width"] <= 32, r


# ----------------------------------------------------------------------------- scored = sampled
CFG = ModelConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8,
)  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_old_logp_is_the_samplers(dtype):
    """At temperature 0.7 the trainer's old log-probs of the sampled tokens are the sampler's
    own (float32: to 1e-5), and the mismatch metric reports that figure."""
    cfg = CFG.replace(dtype=dtype, param_dtype=dtype)
    params = init_params(cfg, 0)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, 64, (3, 5)).astype(np.int32)
    sp = sampler.SamplingParams(temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=12)
    ro = sampler.sample(params, cfg, prompts, np.ones_like(prompts, bool), num_samples=2, sp=sp,
                        seed=1)  # fmt: skip
    rep = np.repeat(prompts, 2, 0)
    rows = make_rows(rep, np.ones_like(rep, bool), ro.tokens, ro.mask, np.ones(6, bool),
                     np.zeros(6), np.zeros(6))  # fmt: skip
    one = sharding.make_mesh(devices=jax.devices()[:1])
    score = step.jit_score(cfg, 64, 1, one, temperature=0.7)
    old = np.asarray(score(params, rows.tokens())[0])
    got = train.logp_mismatch(old, ro, 0.7)
    diff = np.abs(old - ro.logp)[ro.mask]
    np.testing.assert_allclose(got["logp_mismatch_max"], diff.max(), rtol=1e-6)
    np.testing.assert_allclose(got["logp_mismatch_mean"], diff.mean(), rtol=1e-5)
    if dtype == "float32":
        assert diff.max() < 1e-5, diff.max()
        at_one = np.asarray(step.jit_score(cfg, 64, 1, one)(params, rows.tokens())[0])
        assert np.abs(at_one - ro.logp)[ro.mask].max() > 1e-2  # temperature 1 is not it
    else:
        assert diff.max() > 1e-4  # bfloat16 sampler and trainer round differently


def test_format_bonus_is_not_correctness():
    """With format_weight 0.5 a boxed wrong answer earns 0.5 reward but is not correct; the
    shift's group accuracy and accuracy count correctness."""
    from redjax.red import RedController
    from redjax.rewards import Verifier

    with Verifier("math", workers=0, **dict(VERIFIER, format_weight=0.5)) as v:
        judged = v.judge(["\\boxed{3}", "\\boxed{4}", "The answer is 4"], ["4"] * 3)
    np.testing.assert_allclose(judged.reward, [0.5, 1.5, 1.0])
    assert judged.correct.tolist() == [False, True, True]
    ctrl = RedController.from_config(config.RedCfg(), config.RlCfg(), 10)
    rew = judged.reward[:2].reshape(1, 2)
    _, _, acc, shift = ctrl.advantages(rew, None, None, judged.correct[:2].reshape(1, 2))
    assert acc.tolist() == [0.5] and shift.tolist() == [0.5]  # not 1.0, as rewards >= 0.5 say


# ----------------------------------------------------------------------------- seeds
def test_a_seed_changes_only_training_randomness(tmp_path):
    """The held-out problems are the task's whatever the seed; each epoch is a new order of all
    records; a loader restored mid-run continues exactly."""
    from redjax.data.pipeline import make_loader
    from redjax.tokenizer import make_char_tokenizer

    tests = [train.load_data(config.load(None, [f"train.seed={s}"]))[1] for s in (0, 1)]
    assert tests[0] == tests[1]
    records = [{"prompt": f"{i}+0?", "answer": str(i), "solution": f"\\boxed{{{i}}}"}
               for i in range(12)]  # fmt: skip
    tok = make_char_tokenizer(str(tmp_path / "chars"))
    make = lambda: make_loader(
        records, tok, batch_size=4, seed=3, max_prompt_len=16, max_offline_len=16,
        prompt_suffix="", chat=False, system=None,
    )  # fmt: skip
    loader = make()
    epochs = [[a for _ in range(3) for a in next(loader)["answer"]] for _ in range(3)]
    assert all(sorted(e, key=int) == [str(i) for i in range(12)] for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    again = make()
    again.set_state({**loader.get_state(), "next_batch": 4})
    assert [a for _ in range(5) for a in next(again)["answer"]] == [a for e in epochs for a in e][
        16:36
    ]


def test_stochastic_rounding_follows_the_seed():
    p = {"w": jnp.full((64,), 1.0, jnp.bfloat16)}
    u = {"w": jnp.full((64,), 2.0**-10, jnp.float32)}  # below bfloat16's resolution at 1.0
    a, b = (step.apply_updates(p, u, jnp.int32(3), seed)["w"] for seed in (0, 1))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, step.apply_updates(p, u, jnp.int32(3), 0)["w"])


# ----------------------------------------------------------------------------- the gate
def test_gated_micro_batches_equal_one_batch():
    """With gate_frac 0.5 the trainer picks the gated tokens once for the step (the top half of
    all online tokens by old entropy, checked against numpy), so 4 micro-batches update the
    parameters as one full batch does."""
    from test_step import CFG as STEP_CFG
    from test_step import SC, assert_close, host_rows, run

    rows = host_rows()
    params = init_params(STEP_CFG, 0)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    _, ent = step.jit_score(STEP_CFG, SC.chunk, 1, mesh)(params, rows.tokens())
    ent = np.asarray(ent)
    gate = train.entropy_gate(ent, rows, 0.5)
    on = rows.resp_mask & rows.online[:, None]
    np.testing.assert_array_equal(gate, on & (ent >= np.quantile(ent[on], 0.5)))
    assert 0 < gate.sum() < on.sum()
    rows = rows.replace(gate=gate)
    sc = dataclasses.replace(SC, gate_frac=0.5)
    full = run(mesh, rows, sc=sc)
    micro = run(mesh, rows, sc=dataclasses.replace(sc, micro_batches=4))
    assert_close(micro[1], full[1], rtol=2e-5)
    assert_close(micro[0], full[0], rtol=2e-5)


# ----------------------------------------------------------------------------- signals
def test_second_signal_stops_at_once(tmp_path):
    """A first Ctrl-C asks for a save at the end of the step; a second one, in the middle of a
    long step (a reward taking half a second an item), stops at once without saving."""
    run_dir = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "redjax.cli", "train", *TINY, f"train.run_dir={run_dir}",
           "algo=grpo", "reward.fn=_reward_plugins:slow"]  # fmt: skip
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), ROOT]))  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    for line in proc.stdout:
        if _reward_plugins.SLOW_STARTED in line:  # the first step's 32 s of rewards began
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "second signal" in out and time.monotonic() - start < 20
    assert not os.listdir(os.path.join(run_dir, "checkpoints"))


# ----------------------------------------------------------------------------- the sign
def test_the_learning_signal_has_its_sign(tmp_path):
    """GRPO raises a reward any policy can move (the share of digits it writes) within 30 steps;
    the same run with the advantages' sign flipped (reward 1 - share) lowers it; SFT lowers the
    traces' NLL."""

    def curve(name: str, *extra: str) -> list[dict]:
        run_dir = str(tmp_path / name)
        train.run(None, [*TINY, "train.steps=30", f"train.run_dir={run_dir}", *extra])
        return metrics(run_dir)

    share = lambda rows, f: [f(r["reward"]) for r in rows]
    up = share(curve("up", "algo=grpo", "reward.fn=_reward_plugins:digit_share"), float)
    down = share(
        curve("down", "algo=grpo", "reward.fn=_reward_plugins:digit_share_flipped"),
        lambda x: 1 - x,
    )
    assert np.mean(up[-5:]) > np.mean(up[:5]) + 0.05, up
    assert np.mean(down[-5:]) < np.mean(down[:5]) - 0.03, down
    nll = [r["offline_nll"] for r in curve("sft", "algo=sft")]
    assert nll[-1] < nll[0] - 0.5, nll
