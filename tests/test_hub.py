"""Hub ids as model paths and data files, read from a Hugging Face cache the test writes (the
layout huggingface_hub downloads into), offline: nothing is downloaded. Every command that
takes a model or data path reads them; one that is neither local nor cached fails in one line
naming it."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import make_chat_model, write_hub_model, write_hub_repo

from redjax import config, hub, plan, runs
from redjax.cli import main
from redjax.data import load_records
from redjax.models import from_pretrained, read_config
from redjax.tokenizer import load_tokenizer

MODEL = "redjax-test/Tiny-Chat"
DATA = "redjax-test/tiny-math"
TRAIN = f"hf://datasets/{DATA}/main/train-00000-of-00001.parquet"
TEST = f"hf://datasets/{DATA}@main/main/test.jsonl"
GSM8K = [  # GSM8K's columns: the question, the worked answer ending "#### N"
    {"question": f"Tom has {a} apples and buys {b}. How many now?",
     "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"}
    for a, b in ((3, 4), (10, 5), (7, 8), (12, 30))
]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """(cache folder, the model's source folder, its torch model, the data's local copies)."""
    root = tmp_path_factory.mktemp("hub")
    src = root / "src"
    _, torch_model = make_chat_model(src)
    cache = root / "cache"
    write_hub_model(cache, MODEL, src)
    pq.write_table(pa.Table.from_pylist(GSM8K), root / "train-00000-of-00001.parquet")
    with open(root / "test.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in GSM8K[:2])
    files = {
        "main/train-00000-of-00001.parquet": str(root / "train-00000-of-00001.parquet"),
        "main/test.jsonl": str(root / "test.jsonl"),
    }
    write_hub_repo(cache, DATA, files, repo_type="dataset")
    return str(cache), str(src), torch_model, files


@pytest.fixture
def offline(cache, monkeypatch):
    """The test's cache, read offline (as HF_HUB_OFFLINE=1 and HF_HUB_CACHE set by a user)."""
    monkeypatch.setenv("HF_HUB_CACHE", cache[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_model_id_loads_from_the_cache(offline):
    """A hub id gives the cached snapshot's model (transformers' logits), its tokenizer, its
    config and end ids, as run folders, `redjax generate` / `eval` / `export` read it."""
    _, src, torch_model, _ = offline
    folder = hub.model_folder(MODEL)
    assert os.path.isdir(folder) and folder.startswith(offline[0])
    model = from_pretrained(MODEL)
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 10))
    want = torch_model(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), want, atol=1e-4)
    assert read_config(MODEL) == read_config(src) and model.cfg == read_config(src)
    text = "What is 12 + 30? Übung"
    assert load_tokenizer(MODEL)(text)["input_ids"] == load_tokenizer(src)(text)["input_ids"]
    loaded, tok, settings = runs.load_model(MODEL)
    assert loaded.cfg == model.cfg and settings == runs.run_settings(config.Config())


def test_a_data_file_uri_reads_the_cached_file(offline):
    """hf://datasets/OWNER/NAME[@REVISION]/PATH reads the dataset's cached file, as the local
    file reads."""
    _, _, _, files = offline
    for uri, name in ((TRAIN, "main/train-00000-of-00001.parquet"), (TEST, "main/test.jsonl")):
        records = load_records(uri, fields="gsm8k")
        assert records == load_records(files[name], fields="gsm8k")
    assert [r["answer"] for r in load_records(TRAIN)] == ["7", "15", "15", "42"]


def test_commands_take_hub_ids(offline, tmp_path, capsys):
    """`redjax plan`, `generate`, `eval` and `export` with a hub model and hub data files."""
    _, src, _, _ = offline
    args = [f"model.path={MODEL}", f"data.train={TRAIN}", f"data.test={TEST}"]
    fitted = [*args, "data.fields=gsm8k", "data.max_prompt_len=0", "data.max_offline_len=0"]
    local = [f"model.path={src}", *fitted[1:]]
    assert plan.main(None, fitted, devices=1) == plan.main(None, local, devices=1)
    main(["generate", "--model", MODEL, "--prompt", "1 + 1?", "--max-new-tokens", "4"])
    assert "=== prompt 1/1, sample 1/1 (" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    main(["eval", "--model", MODEL, "--data", TEST, "--fields", "gsm8k", "--max-new-tokens", "4",
          "--json", str(out)])  # fmt: skip
    with open(out) as f:
        assert json.load(f)["problems"] == 2
    main(["export", MODEL, str(tmp_path / "exported")])
    assert read_config(str(tmp_path / "exported")).vocab_size == read_config(src).vocab_size


def test_no_network_reads_the_cache(offline, monkeypatch):
    """Online but unreachable (the hub's address a closed local port): the cached copy is read."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert hub.model_folder(MODEL, weights=False) == hub.model_folder(MODEL)
    assert load_records(TRAIN, fields="gsm8k")[3]["answer"] == "42"
    with pytest.raises(FileNotFoundError, match="the hub cannot be reached"):
        hub.model_folder("nobody/nothing")


@pytest.mark.parametrize(
    "args, named",
    [
        (["generate", "--model", "nobody/nothing", "--prompt", "x"], "model 'nobody/nothing'"),
        (["plan", "model.path=nobody/nothing"], "model 'nobody/nothing'"),
        (["eval", "--model", MODEL, "--data", f"hf://datasets/{DATA}/main/nope.parquet"],
         f"data file 'hf://datasets/{DATA}/main/nope.parquet'"),
        (["train", "data.train=hf://datasets/nobody/nothing/x.jsonl"],
         "data file 'hf://datasets/nobody/nothing/x.jsonl'"),
    ],
)  # fmt: skip
def test_neither_local_nor_cached_is_one_line(offline, capsys, tmp_path, args, named):
    """A path neither on disk nor in the cache, offline: exit 2 and one line naming it, the
    cache and what to do."""
    with pytest.raises(SystemExit) as stop:
        main([*args, f"train.run_dir={tmp_path / 'run'}"] if args[0] == "train" else args)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"redjax: error: {named} ") and offline[0] in err
    assert "HF_HUB_OFFLINE=1" in err and "hf download" in err


def test_a_malformed_data_uri_says_the_form(offline):
    with pytest.raises(ValueError, match="hf://datasets/OWNER/NAME/PATH"):
        load_records("hf://datasets/only-a-name")


def test_a_run_resolves_its_hub_model_once(offline, tmp_path, monkeypatch):
    """A LoRA run on a hub id asks the hub once at start-up (tokenizer, weights and the LoRA
    base all read the one cache folder), and its config.yaml keeps the id, not this machine's
    cache path, so that the folder resumes on another machine."""
    import huggingface_hub

    from redjax import train

    calls = []
    download = huggingface_hub.snapshot_download
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(a) or download(*a, **k)
    )
    args = [f"model.path={MODEL}", f"data.train={TRAIN}", f"data.test={TEST}", "data.fields=gsm8k",
            "lora.rank=2", "rollout.prompts=2", "rollout.group_size=2", "eval.every=0",
            f"train.run_dir={tmp_path}"]  # fmt: skip
    r = train.setup(config.load(None, args))
    try:
        assert len(calls) == 1 and r.base_dir == hub.model_folder(MODEL)
        assert config.load(str(tmp_path / "config.yaml")).model.path == MODEL
    finally:
        r.close()
