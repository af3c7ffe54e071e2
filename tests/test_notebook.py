"""notebooks/redjax_tpu.ipynb runs end to end on the CPU in its small setting (nbclient), and what it
shows agrees with the run folders it wrote; its real-model section reads Qwen2.5-0.5B-Instruct
and GSM8K by their hub ids from a Hugging Face cache the test writes (a tiny model under the
model's id, a few GSM8K-style rows under the dataset's), offline."""

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import make_chat_model, write_hub_model, write_hub_repo

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(__file__)), "notebooks", "redjax_tpu.ipynb")


REAL_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
GSM8K = [  # GSM8K's columns: the question, the worked answer ending "#### N"
    {"question": f"Ann has {a} pens and buys {b} more. How many pens does she have?",
     "answer": f"She has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} pens.\n#### {a + b}"}
    for a, b in ((3, 4), (10, 5), (7, 8), (12, 30), (2, 9), (6, 6), (1, 1))
]  # fmt: skip


def write_hub_cache(root) -> tuple[str, int]:
    """A Hugging Face cache holding a tiny chat model as REAL_MODEL and GSM8K-style rows as
    openai/gsm8k's two parquet files; returns (the cache, the model's vocabulary size)."""
    tok, model = make_chat_model(root / "model")
    cache = root / "hf-cache"
    write_hub_model(cache, REAL_MODEL, root / "model")
    files = {}
    for split, rows in (("train", GSM8K[:5]), ("test", GSM8K[5:])):
        name = f"main/{split}-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), root / f"{split}.parquet")
        files[name] = str(root / f"{split}.parquet")
    write_hub_repo(cache, "openai/gsm8k", files, repo_type="dataset")
    return str(cache), model.config.vocab_size


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """(executed notebook, run folder, real-model run folder, the hub model's vocabulary size),
    run in a temporary folder with the small setting."""
    work = tmp_path_factory.mktemp("notebook")
    run_dir = work / "runs" / "nb"
    real_dir = work / "runs" / "real"
    cache, vocab = write_hub_cache(work)
    env = {
        "REDJAX_NOTEBOOK_SMALL": "1",
        "REDJAX_NOTEBOOK_RUN_DIR": str(run_dir),
        "REDJAX_NOTEBOOK_REAL_RUN_DIR": str(real_dir),
        "HF_HUB_CACHE": cache,
        "HF_HUB_OFFLINE": "1",  # nothing is downloaded: the cache holds both
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",  # a one-device CPU runtime
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb, run_dir, real_dir, vocab


def text_of(cell) -> str:
    return "".join(
        o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream"
    )


def test_install_cell_is_skipped_when_importable(executed):
    nb, *_ = executed
    install = next(c for c in nb.cells if c.cell_type == "code" and "pip" in c.source)
    assert "skipping the install" in text_of(install)


def test_small_run_logs_and_plots(executed):
    nb, run_dir, *_ = executed
    with open(run_dir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = [r for r in records if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        for key in ("reward", "accuracy", "lambda", "entropy_on", "entropy_off"):
            assert isinstance(r[key], float), key
        assert 0.0 <= r["accuracy"] <= 1.0 and r["entropy_on"] > 0
    assert steps[0]["lambda"] == 1.0  # red.lambda0, before the controller moves it
    images = [
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if o["output_type"] == "display_data" and "image/png" in o.get("data", {})
    ]
    assert len(images) == 1
    assert any("2 training steps logged" in text_of(c) for c in nb.cells)


def test_evaluation_matches_the_run_folder(executed):
    nb, run_dir, *_ = executed
    with open(run_dir / "eval.json") as f:
        saved = json.load(f)
    assert saved["problems"] == 8
    out = "".join(text_of(c) for c in nb.cells)
    shown = re.search(r"held-out pass@1: ([0-9.]+) on (\d+) problems", out)
    assert shown, out[-2000:]
    assert float(shown.group(1)) == pytest.approx(saved["pass@1"], abs=5e-4)
    assert int(shown.group(2)) == saved["problems"]


def test_real_model_section_reads_the_hub_cache(executed):
    """The real-model cells planned and trained the model and data the hub ids name (here the
    tiny model and rows the cache holds under them), and showed the run's evaluation."""
    nb, _, real_dir, vocab = executed
    out = "".join(text_of(c) for c in nb.cells)
    assert re.search(rf"model: [0-9.]+M parameters \(2 layers, hidden 64, .*vocab {vocab}\)", out)
    with open(real_dir / "config.yaml") as f:
        saved = yaml.safe_load(f)
    assert saved["model"]["path"] == REAL_MODEL
    assert saved["data"]["test"] == "hf://datasets/openai/gsm8k/main/test-00000-of-00001.parquet"
    with open(real_dir / "model" / "config.json") as f:
        assert json.load(f)["vocab_size"] == vocab  # the cached model, not a model from scratch
    with open(real_dir / "metrics.jsonl") as f:
        steps = [r for r in map(json.loads, f) if "reward" in r]
    assert [r["step"] for r in steps] == [1] and steps[0]["rollouts"] == 2 * 2
    with open(real_dir / "eval.json") as f:
        saved = json.load(f)
    assert saved["problems"] == 2  # eval.problems of the 2 held-out rows
    shown = re.search(r"GSM8K held-out pass@1: ([0-9.]+) on (\d+) problems", out)
    assert shown and float(shown.group(1)) == pytest.approx(saved["pass@1"], abs=5e-4)
