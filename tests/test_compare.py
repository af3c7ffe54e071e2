"""bench/compare.py: the warm start is made once and reused; every method's config differs only
in the method's own keys; the same-budget check reads the run folders; the table is computed
from the run folders' metrics (hand-made folders with known numbers)."""

import json
import os

import numpy as np
import pytest
from helpers import bench_module

from redjax import config

compare = bench_module("compare")


def fake_redjax(calls: list):
    """Stands in for `redjax ...` processes: records the call; an export writes a config.json."""

    def run(args: list[str], out: str) -> float:
        calls.append(args)
        if args[0] == "export":
            os.makedirs(args[2], exist_ok=True)
            open(os.path.join(args[2], "config.json"), "w").close()
        return 1.0

    return run


def test_warm_start_is_trained_once_per_config(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "redjax", fake_redjax(calls))
    first = compare.warm_start(str(tmp_path), [])
    again = compare.warm_start(str(tmp_path), [])
    assert first == again and [c[0] for c in calls] == ["train", "export"]
    other = compare.warm_start(str(tmp_path), ["train.steps=7"])  # another warm config
    assert other != first and [c[0] for c in calls] == ["train", "export"] * 2


def test_methods_share_everything_but_their_own_keys():
    seen = {}
    for name in compare.METHODS:
        args = compare.method_args(name, compare.TASK, ["model.path=/m"], seed=2)
        assert args[0] == "train" and args[1] == compare.TASK
        cfg = config.to_dict(config.load(args[1], args[2:]))
        assert [f"algo={cfg['algo']}"] == compare.METHODS[name][:1]
        seen[name] = {k: v for k, v in cfg.items() if k not in compare.METHOD_KEYS}
    ref = seen["red"]
    assert ref["train"]["seed"] == 2 and ref["model"]["path"] == "/m"
    assert all(s == ref for s in seen.values())
    lam = config.load(compare.TASK, compare.METHODS["red_fixed_lambda"]).red
    shift = config.load(compare.TASK, compare.METHODS["red_no_shift"]).red
    assert (lam.lam, lam.shift, shift.lam, shift.shift) == ("fixed", "linear", "red", "zero")
    red_cfg = config.load(compare.TASK, compare.METHODS["red"]).red
    sign = config.load(compare.TASK, compare.METHODS["red_sign"]).red
    assert (red_cfg.rule, red_cfg.entropy_change, red_cfg.lam) == ("ratio", "drift", "red")
    assert (sign.rule, sign.entropy_change) == ("sign", "probe")
    steps = config.load(compare.TASK).train.steps
    sft_then = config.load(
        compare.TASK, compare.method_args("sft_then_grpo", compare.TASK, [], 0)[2:]
    )
    assert sft_then.red.sft_steps == steps // 2


def make_run(path, algo: str, evals: list, *, digests=(1.0, 2.0), rollouts=128.0, old=0.5, **kw):
    """A run folder by hand: config.yaml, metrics.jsonl, eval.json, old.json, wall.json. `lams`,
    `lengths`, `cut`: each step's lambda, response_length and truncated_frac."""
    os.makedirs(path)
    cfg = config.load(compare.TASK, [f"algo={algo}", *kw.get("overrides", [])])
    config.dump(cfg, os.path.join(path, "config.yaml"))
    n = len(digests)
    lams, lengths, cut = (
        kw.get("lams", [1.0] * n),
        kw.get("lengths", [20.0] * n),
        kw.get("cut", [0.0] * n),
    )
    rows = [
        {"step": i + 1, "loss": 0.0, "batch_digest": d, "rollouts": rollouts, "accuracy": 0.1,
         "lambda": lams[i], "tokens_off": 0 if lams[i] is None else 10, "shift_mean": 0.0,
         "entropy_on": 1.0, "entropy_off": 1.0, "response_length": lengths[i],
         "truncated_frac": cut[i]}
        for i, d in enumerate(digests)
    ]  # fmt: skip
    rows += [{"step": s, "eval/heldout_acc": a, "eval/mean_length": n} for s, a, n in evals]
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    for name, value in (("eval", {}), ("old", {"pass@1": old}), ("wall", {"seconds": 10.0})):
        with open(os.path.join(path, f"{name}.json"), "w") as f:
            json.dump(value, f)
    return str(path)


def test_table_comes_from_the_run_folders(tmp_path):
    # red.lambda_min / lambda_max of the config: 0.05 and 5; 0.0505 is at the floor (within 1%).
    seed0 = dict(lams=[0.0505, 2.0], lengths=[30.0, 40.0], cut=[0.5, 0.0])
    seed1 = dict(lams=[None, 4.0], lengths=[60.0, 50.0], cut=[0.25, 0.25])  # no traces at step 1
    runs = {
        "red": {
            0: make_run(
                tmp_path / "r0", "red", [(0, 0.2, 20.0), (50, 0.7, 30.0)], old=0.9, **seed0
            ),
            1: make_run(
                tmp_path / "r1", "red", [(0, 0.2, 20.0), (50, 0.5, 34.0)], old=0.7, **seed1
            ),
        },
        "grpo": {0: make_run(tmp_path / "g0", "grpo", [(0, 0.2, 20.0), (50, 0.3, 10.0)])},
    }
    runs = compare.read_runs(runs)
    compare.check_same_budget(runs)
    start, red, grpo = compare.table(runs, target=0.6, start_old=0.95).splitlines()[2:]
    assert start.split("|")[1:-1][:2] == [" start (step 0) ", " 0.200 ± 0.000 "]
    assert start.split("|")[5] == " 0.950 "
    cells = [c.strip() for c in red.split("|")[1:-1]]
    sd = np.std([0.7, 0.5], ddof=1)
    assert cells == [
        "red", f"0.600 ± {sd:.3f}", f"+0.400 ± {sd:.3f}", f"0.600 ± {sd:.3f}",
        f"0.800 ± {np.std([0.9, 0.7], ddof=1):.3f}", "32.0 ± 2.8", "50 (1/2 seeds)", "256",
        "10 ± 0", f"45.0 ± {np.std([35, 55], ddof=1):.1f}", "0.250 ± 0.000", "0.0505-4",
        f"0.75 ± {np.std([0.5, 1.0], ddof=1):.2f}",
    ]  # fmt: skip
    grpo = [c.strip() for c in grpo.split("|")[1:-1]]
    assert grpo[6] == "- (0/1)" and grpo[9:] == ["20.0", "0.000", "1-1", "1.00"]
    assert start.count("|") == len(cells) + 1


@pytest.mark.parametrize(
    "change, error",
    [
        ({"digests": (1.0, 3.0)}, "different prompts or order"),
        ({"overrides": ["optim.lr=0.1"]}, "config differs in \\['optim'\\]"),
        ({"rollouts": 5.0}, "other than 128 rollouts"),
    ],
)
def test_same_budget_check_names_the_difference(tmp_path, change, error):
    runs = {
        "red": {0: make_run(tmp_path / "a", "red", [(0, 0.1, 1.0)])},
        "luffy": {0: make_run(tmp_path / "b", "luffy", [(0, 0.1, 1.0)], **change)},
    }
    with pytest.raises(ValueError, match=error):
        compare.check_same_budget(compare.read_runs(runs))


def test_task_chooses_the_config_and_the_runs_folder(tmp_path, monkeypatch):
    """--task picks configs/compare/TASK.yaml (default long), from the same warm start; another
    task's runs and table go to OUT/TASK; --task with a config of one's own is refused."""
    assert compare.base_config(None, [], "verbose") == (compare.TASKS["verbose"], True)
    for task in ("verbose", "noisy"):
        cfg = config.load(compare.TASKS[task])
        assert cfg.data.builtin_difficulty == task and cfg.train.run_dir == f"runs/compare-{task}"
    assert compare.parse([]).task == "long"
    assert compare.parse(["--task", "noisy", "train.steps=5"]).overrides == ["train.steps=5"]
    for argv in (["--task", "noisy", "my.yaml"], ["--task", "long", "data.train=t.jsonl"]):
        with pytest.raises(SystemExit):
            compare.parse(argv)
    calls, fake = [], fake_redjax([])

    def run(args: list[str], out: str) -> float:  # a method's train writes a run folder
        calls.append(args)
        folder = args[-1].removeprefix("train.run_dir=")
        if args[0] == "train" and os.path.basename(folder) == "seed0":
            make_run(folder, "grpo", [(0, 0.1, 1.0)])
        return fake(args, out)

    monkeypatch.setattr(compare, "redjax", run)
    monkeypatch.setattr(compare, "old_task", lambda *a: 0.5)
    monkeypatch.setattr(compare, "plot", lambda runs, path: None)
    out = str(tmp_path)
    compare.main(["--task", "verbose", "--seeds", "1", "--methods", "grpo", "--out", out])
    assert [c[0] for c in calls] == ["train", "export", "train"]
    assert calls[2][1] == compare.TASKS["verbose"]
    assert calls[2][-1] == f"train.run_dir={os.path.join(out, 'verbose', 'grpo', 'seed0')}"
    assert os.path.isfile(os.path.join(out, "verbose", "compare.md"))
    model = [a for a in calls[2] if a.startswith("model.path=")]
    assert model == [f"model.path={calls[1][2]}"]
    assert calls[1][2] == compare.warm_start(out, [], train=False)  # the one warm start


def test_base_config_of_a_run():
    assert compare.base_config(None, []) == (compare.TASK, True)  # the built-in benchmark
    assert compare.base_config(None, ["train.steps=5"]) == (compare.TASK, True)
    assert compare.base_config(None, ["data.train=t.jsonl"]) == (config.default_file(), False)
    assert compare.base_config("my.yaml", ["data.train=t.jsonl"]) == ("my.yaml", False)
