"""notebooks/redjax_tpu.ipynb runs end to end on the CPU in its small setting (nbclient), and what it
shows agrees with the run folder it wrote."""

import json
import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(__file__)), "notebooks", "redjax_tpu.ipynb")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """(executed notebook, run folder), run in a temporary folder with the small setting."""
    work = tmp_path_factory.mktemp("notebook")
    run_dir = work / "runs" / "nb"
    env = {
        "REDJAX_NOTEBOOK_SMALL": "1",
        "REDJAX_NOTEBOOK_RUN_DIR": str(run_dir),
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
    return nb, run_dir


def text_of(cell) -> str:
    return "".join(
        o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream"
    )


def test_install_cell_is_skipped_when_importable(executed):
    nb, _ = executed
    install = next(c for c in nb.cells if c.cell_type == "code" and "pip" in c.source)
    assert "skipping the install" in text_of(install)


def test_small_run_logs_and_plots(executed):
    nb, run_dir = executed
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
    nb, run_dir = executed
    with open(run_dir / "eval.json") as f:
        saved = json.load(f)
    assert saved["problems"] == 8
    out = "".join(text_of(c) for c in nb.cells)
    shown = re.search(r"held-out pass@1: ([0-9.]+) on (\d+) problems", out)
    assert shown, out[-2000:]
    assert float(shown.group(1)) == pytest.approx(saved["pass@1"], abs=5e-4)
    assert int(shown.group(2)) == saved["problems"]
