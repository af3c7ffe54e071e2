"""The trainer end to end: the default config for a few steps, and resume after SIGTERM and
after a hard kill reaching the same parameters and metrics as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import tiny_run

TINY = tiny_run(4, 2, "eval.samples_every=1", "reward.workers=1")
VOLATILE = ("time/", "tokens_per_sec", "verifier_timeouts")


def env(tmp_path):
    e = dict(os.environ)
    e.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return e


def start(run_dir, tmp_path, *extra):
    cmd = [sys.executable, "-m", "redjax.cli", "train", *TINY, f"train.run_dir={run_dir}", *extra]
    return subprocess.Popen(
        cmd, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(ln) for ln in f]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def final_params(run_dir):
    from redjax import runs

    model, _, _ = runs.load_model(run_dir)
    import jax

    return jax.tree.map(np.asarray, model.params)


def wait_for_step(run_dir, step, proc, timeout=300):
    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(ln)["step"] for ln in f if ln.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    run_dir = str(tmp / "run")
    out = finish(start(run_dir, tmp, "train.steps=5", "train.save_every=2"))
    return run_dir, out, tmp


def test_default_run_end_to_end(reference):
    run_dir, out, _ = reference
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "samples.jsonl",
        "eval.md",
        "eval.json",
        "model/config.json",
        "model/tokenizer.json",
    ):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert any(f.startswith("events") for f in os.listdir(os.path.join(run_dir, "tb")))
    ckpts = sorted(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.isdigit())
    assert ckpts == [2, 4, 5]  # keep=3 of 2, 4 and the final one
    rows = metrics(run_dir)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    for r in steps:
        for k in (
            "loss_rl",
            "loss_ext",
            "lambda",
            "reward",
            "accuracy",
            "entropy_on",
            "entropy_off",
            "clip_frac",
            "kl_old",
            "grad_norm",
            "shift_mean",
            "shift_p50",
            "lambda_target",
            "response_length",
        ):
            assert np.isfinite(r[k]), (k, r)
        assert 0.05 <= r["lambda"] <= 5.0
    # dH by the drift (the default): none at step 1, then the change of the batch entropies
    assert np.isnan(steps[0]["dH_on"]) and np.isnan(steps[0]["dH_off"])
    for prev, r in zip(steps, steps[1:], strict=False):
        for kind in ("on", "off"):
            want = r[f"entropy_{kind}"] - prev[f"entropy_{kind}"]
            np.testing.assert_allclose(r[f"dH_{kind}"], want, rtol=1e-5, atol=1e-7)
        assert r["rollouts"] == 4 * 2 and 0 <= r["batch_digest"] < 2**24  # prompts x G
    assert rows[-1]["step"] == 5 and "eval/heldout_acc" in rows[-1]
    assert "held-out accuracy" in out and "pass@1" in out
    with open(os.path.join(run_dir, "eval.json")) as f:
        assert json.load(f)["problems"] == 4


@pytest.mark.parametrize("how", ["sigterm", "kill"])
def test_resume_matches_uninterrupted(reference, tmp_path, how):
    ref_dir, _, cache = reference
    run_dir = str(tmp_path / "run")
    proc = start(run_dir, cache, "train.steps=5", "train.save_every=2")
    if how == "sigterm":  # as early as possible: later, the last steps may finish first
        wait_for_step(run_dir, 1, proc)
        proc.send_signal(signal.SIGTERM)  # saves at the end of the step in flight
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 128 + signal.SIGTERM, out  # unfinished: schedulers restart it
        assert "Re-run the same command to resume" in out
    else:
        wait_for_step(run_dir, 3, proc)
        while not os.path.isdir(os.path.join(run_dir, "checkpoints", "2")):  # finalised
            time.sleep(0.1)
        proc.kill()  # no chance to save: resumes from the last periodic checkpoint
        proc.wait()
    out = finish(start(run_dir, cache, "train.steps=5", "train.save_every=2"))
    assert "resumed" in out
    assert metrics(run_dir) == metrics(ref_dir)
    a, b = final_params(run_dir), final_params(ref_dir)
    import jax

    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_export_and_eval(reference, tmp_path):
    """`redjax export` writes a folder transformers loads with the same logits; `redjax eval`
    scores a benchmark file from the run folder and from the exported folder alike."""
    import torch
    import transformers

    from redjax import runs
    from redjax.data import make_task, write_task

    run_dir, _, cache = reference
    out = tmp_path / "hf"
    cmd = [sys.executable, "-m", "redjax.cli"]
    subprocess.run([*cmd, "export", run_dir, str(out)], check=True, env=env(cache))
    model, _, _ = runs.load_model(run_dir)
    tm = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 12))
    ref = tm(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), ref, atol=1e-4)

    # The run folder's and the exported tokenizer encode exactly as the one training used.
    from redjax.tokenizer import load_tokenizer, make_char_tokenizer

    # Both folders end generations where the rollouts ended: <|endoftext|> and <|im_end|>.
    chars = make_char_tokenizer(str(tmp_path / "ends"))
    ends = {chars.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    for folder in (os.path.join(run_dir, "model"), str(out)):
        with open(os.path.join(folder, "generation_config.json")) as f:
            assert set(json.load(f)["eos_token_id"]) == ends, folder
    assert set(tm.generation_config.eos_token_id) == ends

    text = "What is 12 + 30?\n 4+9=13. \\boxed{42}"
    want = make_char_tokenizer(str(tmp_path / "chars"))(text)["input_ids"]
    for folder in (os.path.join(run_dir, "model"), str(out)):
        assert load_tokenizer(folder)(text)["input_ids"] == want, folder

    # `redjax eval` of the run folder on the held-out problems repeats the run's final
    # evaluation exactly (greedy, same prompts, same batch shape).
    held_out = tmp_path / "held_out.jsonl"
    with open(held_out, "w") as f:
        for r in make_task(4, seed=0, split="test"):
            f.write(json.dumps(r) + "\n")
    res_file = tmp_path / "again.json"
    args = [
        "eval",
        "--model",
        run_dir,
        "--data",
        str(held_out),
        "--max-new-tokens",
        "16",
        "--batch-size",
        "32",
        "--json",
        str(res_file),
    ]
    subprocess.run([*cmd, *args], check=True, env=env(cache), capture_output=True)
    with open(res_file) as f, open(os.path.join(run_dir, "eval.json")) as g:
        again, final = json.load(f), json.load(g)
    assert (again["pass@1"], again["mean_length"]) == (final["pass@1"], final["mean_length"])

    files = write_task(str(tmp_path / "task"), 0, 6, seed=1)
    for model_path in (run_dir, str(out)):
        res_file = tmp_path / "res.json"
        args = [
            "eval",
            "--model",
            model_path,
            "--data",
            files["test"],
            "--k",
            "2",
            "--max-new-tokens",
            "16",
            "--batch-size",
            "4",
            "--json",
            str(res_file),
        ]
        printed = subprocess.run(
            [*cmd, *args], check=True, env=env(cache), capture_output=True, text=True
        ).stdout
        with open(res_file) as f:
            res = json.load(f)
        assert res["problems"] == 6 and 0 <= res["pass@1"] <= res["pass@2"] <= 1
        assert "| builtin-easy | 6 |" in printed
