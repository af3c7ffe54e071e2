"""The one Logger feeds metrics.jsonl, TensorBoard and wandb (offline) the same numbers."""

import glob
import json
import os
import struct
import time

import numpy as np
import pytest

from redjax import logs

BLOCK = 32768  # the .wandb file is a LevelDB log: 32 KiB blocks of 7-byte-headed chunks


def wandb_records(path):
    """The protobuf records of an offline run's .wandb file, parsed with wandb's own schema."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:7]
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # a block's zero trailer
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def finished(path, timeout=60.0):
    """The records of a .wandb file once they end with the run's exit record: wandb-core writes
    the file after run.finish() returns (measured: up to seconds later on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(path))
        except Exception:  # a record cut off mid-write
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.1)


def wandb_history(run_dir):
    """({step: {key: value}} of the history rows, run config) of run_dir's one offline run."""
    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    records = finished(path)
    rows, cfg = {}, {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            rows.setdefault(row["_step"], {}).update(row)
        elif kind == "run":
            cfg |= {u.key: json.loads(u.value_json) for u in r.run.config.update}
    return rows, cfg


def session(run_dir, report_to):
    """A short Logger session: three train steps, an evaluation at the last one, samples."""
    config = {"train": {"steps": 3, "report_to": list(report_to)}, "optim": {"lr": 0.001}}
    logger = logs.Logger(run_dir, report_to=report_to, config=config)
    for s in (1, 2, 3):
        logger.log(
            s,
            {"loss": 1.0 / s, "reward_mean": np.float32(0.25 * s), "lr": 1e-3, "skipped": 0,
             "bad": float("nan"), "shift": np.linspace(0, s, 7)},
        )  # fmt: skip
    logger.log(3, {"eval/heldout_acc": 0.5})
    logger.samples(3, [{"prompt": "1+1", "completion": "2", "reward": 1.0, "answer": "2"}])
    logger.close()
    return config


def test_wandb_offline_holds_the_scalars_of_metrics_jsonl(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    config = session(run_dir, ["tensorboard", "wandb"])
    rows, wandb_cfg = wandb_history(run_dir)
    expected = {}
    for r in logs.read_metrics(run_dir):
        numbers = {k: v for k, v in r.items() if k != "step" and np.isfinite(v)}
        expected.setdefault(r["step"], {}).update(numbers)
    assert sorted(rows) == [1, 2, 3]
    for step, numbers in expected.items():
        got = {k: v for k, v in rows[step].items() if k in numbers}
        assert got == pytest.approx(numbers, rel=1e-6), step
        assert "bad" not in rows[step]  # non-finite: in metrics.jsonl only, as in TensorBoard
        assert rows[step]["shift/_type"] == "histogram"  # the distribution, whole
    assert expected[3]["eval/heldout_acc"] == 0.5 and "loss" in expected[3]
    assert wandb_cfg["train"] == config["train"] and wandb_cfg["optim"] == config["optim"]
    assert os.path.isdir(os.path.join(run_dir, "tb"))


def test_report_to_only_wandb_writes_no_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    session(run_dir, ["wandb"])
    assert not os.path.exists(os.path.join(run_dir, "tb"))
    assert len(logs.read_metrics(run_dir)) == 4
    assert sorted(wandb_history(run_dir)[0]) == [1, 2, 3]


def test_report_to_nothing_keeps_metrics_jsonl(tmp_path):
    session(str(tmp_path), [])
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1, 2, 3, 3]
    assert not os.path.exists(tmp_path / "tb")


def tb_values(folder):
    """(step, tag, Summary.Value) of the TensorBoard event files of `folder` (TFRecord framing:
    length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + n])
            i += 16 + n
            out += [(event.step, v.tag, v) for v in event.summary.value]
    return out


def test_tensorboard_gets_the_config_and_the_scalars(tmp_path):
    session(str(tmp_path), ["tensorboard"])
    values = tb_values(str(tmp_path / "tb"))
    loss = [(step, v.simple_value) for step, tag, v in values if tag == "loss"]
    assert loss == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    (text,) = [v for _, tag, v in values if tag.startswith("config")]
    assert "lr: 0.001" in text.tensor.string_val[0].decode()


def test_missing_wandb_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ValueError, match=r"pip install 'redjax\[wandb\]'") as e:
        logs.Logger(str(tmp_path), report_to=["wandb"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown"):
        logs.Logger(str(tmp_path), report_to=["mlflow"])
