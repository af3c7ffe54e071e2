"""Record readers (field maps, errors) and the grain batch pipeline (round trip, resume, shards)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from redjax.data import encode_prompts, load_records, make_loader, make_task
from redjax.shapes import data_bucket as bucket
from redjax.shapes import default_buckets
from redjax.tokenizer import format_prompt, make_char_tokenizer

# Prompt settings of the loaders below: no suffix, no system prompt; raw text or the chat template.
PLAIN = dict(prompt_suffix="", chat=False, system=None)
CHAT = dict(prompt_suffix="", chat=True, system=None)

# ---------------------------------------------------------------- sources


def write(path, rows, fmt):
    """Writes rows as JSONL or Parquet and returns the path as str."""
    path = f"{path}.{fmt}"
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


GSM8K = "She sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72.\n#### 1,072"
MATH = "First $\\boxed{3}$ is wrong. So $x = \\boxed{\\frac{1}{2}}$."


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("fields", ["default", "auto"])
def test_default_preset(tmp_path, fmt, fields):
    rows = [
        {"prompt": "What is 1 + 1?", "answer": "2", "solution": "1 + 1 = 2. \\boxed{2}"},
        {"prompt": "What is 2 + 2?", "answer": "4", "solution": None},
    ]
    path = write(tmp_path / "arith", rows, fmt)
    stats = {}
    records = load_records(path, fields=fields, stats=stats)
    assert records == [
        {
            "prompt": "What is 1 + 1?",
            "answer": "2",
            "solution": "1 + 1 = 2. \\boxed{2}",
            "source": "arith",
            "row": rows[0],  # the row's columns as the file has them (data.row_columns: *)
        },
        {
            "prompt": "What is 2 + 2?",
            "answer": "4",
            "solution": None,
            "source": "arith",
            "row": rows[1],
        },
    ]
    assert stats == {"rows": 2, "records": 2, "skipped": 0, "errors": [], "fields": "default"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("fields", ["openr1", "auto"])
def test_openr1_preset(tmp_path, fmt, fields):
    rows = [
        {
            "problem": "P1",
            "answer": "1",
            "solution": "human",
            "generations": ["wrong", "right", "also right"],
            "correctness_math_verify": [False, True, True],
            "source": "olympiads",
        },
        {
            "problem": "P2",
            "answer": "2",
            "solution": "human",
            "generations": ["first", "second"],
            "correctness_math_verify": [False, False],
            "source": "amc",
        },
        {
            "problem": "P3",
            "answer": "3",
            "solution": "human 3",
            "generations": [],
            "correctness_math_verify": [],
            "source": "amc",
        },
    ]
    stats = {}
    records = load_records(write(tmp_path / "r1", rows, fmt), fields=fields, stats=stats)
    assert stats["fields"] == "openr1"
    assert [r["solution"] for r in records] == ["right", "first", "human 3"]
    assert [r["prompt"] for r in records] == ["P1", "P2", "P3"]
    assert [r["answer"] for r in records] == ["1", "2", "3"]
    assert [r["source"] for r in records] == ["olympiads", "amc", "amc"]


def test_openr1_without_correctness_takes_first_generation(tmp_path):
    rows = [{"problem": "P", "answer": "1", "generations": ["g0", "g1"]}]
    assert load_records(write(tmp_path / "r1", rows, "jsonl"))[0]["solution"] == "g0"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("fields", ["gsm8k", "auto"])
def test_gsm8k_preset(tmp_path, fmt, fields):
    rows = [{"question": "How many clips?", "answer": GSM8K}]
    stats = {}
    (record,) = load_records(write(tmp_path / "gsm", rows, fmt), fields=fields, stats=stats)
    assert stats["fields"] == "gsm8k"
    assert record["prompt"] == "How many clips?"
    assert record["answer"] == "1072"
    assert record["solution"] == (
        "She sold 48/2 = 24 clips in May.\nIn all 48+24 = 72.\nThe final answer is \\boxed{1072}"
    )


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("fields", ["math", "auto"])
def test_math_preset(tmp_path, fmt, fields):
    rows = [{"problem": "Find x.", "solution": MATH, "level": "Level 2"}]
    stats = {}
    (record,) = load_records(write(tmp_path / "math", rows, fmt), fields=fields, stats=stats)
    assert stats["fields"] == "math"
    assert record == {
        "prompt": "Find x.",
        "answer": "\\frac{1}{2}",
        "solution": MATH,
        "source": "math",
        "row": rows[0],  # "level" and all: a reward function can read it
    }


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_explicit_field_map_and_case_insensitive_columns(tmp_path, fmt):
    rows = [{"Q": "Why?", "Gold": 42, "Trace": "Because. \\boxed{42}", "Origin": "aime"}]
    path = write(tmp_path / "custom", rows, fmt)
    fields = {"prompt": "q", "answer": "gold", "solution": "trace", "source": "origin"}
    assert load_records(path, fields=fields, row_columns=["origin", "level"]) == [
        {
            "prompt": "Why?",
            "answer": "42",
            "solution": "Because. \\boxed{42}",
            "source": "aime",
            "row": {"origin": "aime"},  # a named column as the row has it (any case); none absent
        }
    ]
    # AIME-style capitalised columns are found by the presets too.
    aime = write(tmp_path / "aime", [{"Problem": "P", "Answer": 7}], fmt)
    assert load_records(aime)[0]["answer"] == "7"


def jsonl_bytes(tmp_path, lines):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


GOOD = b'{"prompt": "p", "answer": "1"}'


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (b'{"prompt": "p", "answer": ', r"line 2: malformed JSON"),
        (b'{"prompt": "p"}', r"line 2: field 'answer': is missing"),
        (b'{"prompt": "  ", "answer": "1"}', r"line 2: field 'prompt': is empty"),
        (b'{"prompt": "caf\xe9", "answer": "1"}', r"line 2: .*UTF-8"),
        (b'["p", "1"]', r"line 2: expected a JSON object"),
        (b'{"prompt": ["p"], "answer": "1"}', r"line 2: field 'prompt': expected text"),
    ],
)
def test_jsonl_errors_name_file_line_and_field(tmp_path, bad, pattern):
    path = jsonl_bytes(tmp_path, [GOOD, bad, GOOD])
    with pytest.raises(ValueError, match=r"bad\.jsonl, " + pattern):
        load_records(path, fields="default")
    stats = {}
    records = load_records(path, fields="default", on_error="skip", stats=stats)
    assert len(records) == 2
    assert stats["skipped"] == 1 and stats["rows"] == 3
    assert "line 2" in stats["errors"][0]


def test_parquet_errors_name_file_row_and_field(tmp_path):
    path = str(tmp_path / "bad.parquet")
    table = pa.table(
        {
            "prompt": pa.array([b"ok", b"\xff\xfe", b"fine", b"also"], pa.binary()),
            "answer": pa.array(["1", "2", None, "4"]),
        }
    )
    pq.write_table(table, path)
    with pytest.raises(
        ValueError, match=r"bad\.parquet, row 1: field 'prompt': is not valid UTF-8"
    ):
        load_records(path, fields="default")
    stats = {}
    records = load_records(path, fields="default", on_error="skip", stats=stats)
    assert [r["prompt"] for r in records] == ["ok", "also"]
    assert stats["skipped"] == 2
    assert "row 2: field 'answer': is missing" in stats["errors"][1]


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"x\.csv: unsupported file type"):
        load_records(str(tmp_path / "x.csv"))
    path = write(tmp_path / "odd", [{"text": "t", "label": 1}], "jsonl")
    with pytest.raises(ValueError, match=r"odd\.jsonl, line 1: cannot detect the field map"):
        load_records(path)
    with pytest.raises(ValueError, match="unknown field map"):
        load_records(path, fields="alpaca")
    with pytest.raises(ValueError, match="must map 'prompt' and 'answer'"):
        load_records(path, fields={"prompt": "text"})
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no records"):
        load_records(str(tmp_path / "empty.jsonl"))


def test_json_array_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"prompt": "p", "answer": "1"}, {"prompt": "q"}]))
    with pytest.raises(ValueError, match=r"a\.json, row 1: field 'answer': is missing"):
        load_records(str(path))


# ---------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_char_tokenizer(str(tmp_path_factory.mktemp("char")))


def distinct_records(n, seed=0):
    """Distinct prompts with solutions, plus every fifth record without one."""
    records = make_task(n, seed=seed, split="test", difficulty="medium")
    for i, r in enumerate(records):
        r["prompt"] = f"{i}: {r['prompt']}"
        if i % 5 == 4:
            r["solution"] = None
    return records


def test_bucket_helpers():
    assert default_buckets(100) == (16, 32, 64, 100)
    assert default_buckets(64) == (16, 32, 64)
    assert default_buckets(8) == (8,)
    assert bucket(1, (16, 32)) == 16 and bucket(17, (16, 32)) == 32 and bucket(32, (32, 16)) == 32
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket(33, (16, 32))


@pytest.mark.parametrize("chat", [True, False])
def test_batches_decode_to_source_text(tok, chat):
    records = distinct_records(40)
    suffix = "\nPut the answer in \\boxed{}."
    loader = make_loader(
        records,
        tok,
        batch_size=8,
        seed=1,
        max_prompt_len=256,
        max_offline_len=128,
        prompt_suffix=suffix,
        chat=chat,
        system=None,
    )
    end = "<|im_end|>" if chat else "<|endoftext|>"
    by_prompt = {
        format_prompt(tok, r["prompt"], suffix=suffix, system=None, chat=chat): r for r in records
    }
    seen = []
    for _ in range(5):  # one epoch
        b = next(loader)
        assert b["prompt_ids"].dtype == np.int32 and b["offline_ids"].dtype == np.int32
        assert b["prompt_ids"].shape[1] in default_buckets(256)
        assert b["offline_ids"].shape[1] in default_buckets(128)
        for i, text in enumerate(b["prompt_text"]):
            record = by_prompt[text]
            mask = b["prompt_mask"][i]
            n = mask.sum()
            assert mask[-n:].all() and not mask[:-n].any()  # left-padded
            assert (b["prompt_ids"][i][~mask] == tok.pad_token_id).all()
            assert tok.decode(b["prompt_ids"][i][mask]) == text
            assert b["answer"][i] == record["answer"] and b["source"][i] == record["source"]
            omask = b["offline_mask"][i]
            m = omask.sum()
            assert omask[:m].all() and not omask[m:].any()  # right-padded
            assert (b["offline_ids"][i][~omask] == tok.pad_token_id).all()
            if record["solution"] is None:
                assert not b["has_offline"][i] and m == 0 and b["solution"][i] == ""
            else:
                assert b["has_offline"][i]
                assert tok.decode(b["offline_ids"][i][omask]) == record["solution"] + end
            seen.append(text)
    assert sorted(seen) == sorted(by_prompt)  # one epoch is every record once


def test_long_records_are_dropped_and_counted(tok):
    records = distinct_records(60)
    max_p, max_o = 70, 36
    kwargs = dict(batch_size=4, seed=0, max_prompt_len=max_p, max_offline_len=max_o, **PLAIN)
    loader = make_loader(records, tok, **kwargs)
    # The char tokenizer has one token per character; the offline trace adds the end token.
    long_p = [len(r["prompt"]) > max_p for r in records]
    long_o = [
        not lp and r["solution"] is not None and len(r["solution"]) + 1 > max_o
        for r, lp in zip(records, long_p, strict=True)
    ]
    assert 0 < sum(long_p) < 60 and 0 < sum(long_o) < 60
    assert loader.stats["dropped_long_prompt"] == sum(long_p)
    assert loader.stats["dropped_long_offline"] == sum(long_o)
    assert loader.stats["kept"] == 60 - sum(long_p) - sum(long_o)
    for _ in range(10):
        b = next(loader)
        assert b["prompt_mask"].sum(1).max() <= max_p and b["offline_mask"].sum(1).max() <= max_o
    first = next(i for i in range(60) if long_p[i] or long_o[i])
    kind = "prompt has \\d+ tokens > max_prompt_len" if long_p[first] else "offline trace has"
    with pytest.raises(ValueError, match=rf"record {first} .*{kind}"):
        make_loader(records, tok, **kwargs, drop_long=False)
    with pytest.raises(ValueError, match="no records left"):
        make_loader(records, tok, **{**kwargs, "max_prompt_len": 5, "chat": True})


def same_batch(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]


def test_restored_loader_yields_the_same_batches(tok):
    records = distinct_records(36)
    kwargs = dict(batch_size=8, seed=5, max_prompt_len=128, max_offline_len=64, **CHAT)
    loader = make_loader(records, tok, **kwargs)
    first = [next(loader) for _ in range(7)]  # crosses the epoch boundary (4 batches per epoch)
    state = json.loads(json.dumps(loader.get_state()))
    expected = [next(loader) for _ in range(6)]
    restored = make_loader(records, tok, **kwargs)
    restored.set_state(state)
    for a, b in zip(expected, [next(restored) for _ in range(6)], strict=True):
        same_batch(a, b)
    # A fresh loader replays from the start; the second epoch is shuffled differently.
    fresh = make_loader(records, tok, **kwargs)
    same_batch(first[0], next(fresh))
    assert first[0]["prompt_text"] != first[4]["prompt_text"]
    other = make_loader(records, tok, **{**kwargs, "seed": 6})
    with pytest.raises(ValueError, match="other data or settings"):
        other.set_state(state)


def test_host_shards_are_disjoint_and_cover_the_data(tok):
    records = distinct_records(48)
    kwargs = dict(batch_size=4, seed=2, max_prompt_len=128, max_offline_len=64, shard_count=2)
    kwargs.update(CHAT)
    epochs = []
    for epoch in range(2):
        hosts = []
        for host in range(2):
            loader = make_loader(records, tok, shard_index=host, **kwargs)
            loader.set_state({**loader.get_state(), "next_batch": 6 * epoch})
            assert loader.stats["batches_per_epoch"] == 6
            hosts.append([p for _ in range(6) for p in next(loader)["prompt_text"]])
        assert not set(hosts[0]) & set(hosts[1])
        assert sorted(hosts[0] + hosts[1]) == sorted(
            format_prompt(tok, r["prompt"], suffix="", system=None, chat=True) for r in records
        )
        epochs.append(hosts)
    assert epochs[0][0] != epochs[1][0]  # each epoch is a new order
    # An odd count leaves one record out of each epoch so both hosts stay in step.
    odd = [make_loader(records[:47], tok, shard_index=h, **kwargs) for h in range(2)]
    assert [x.stats["shard_records"] for x in odd] == [23, 23]
    with pytest.raises(ValueError, match="shard_index"):
        make_loader(records, tok, shard_index=2, **kwargs)


def test_encode_prompts_keeps_order_and_pads_the_last_batch(tok):
    records = distinct_records(10)
    batches = encode_prompts(
        records, tok, batch_size=4, prompt_suffix=" Go.", chat=True, system=None
    )
    assert len(batches) == 3
    assert [b["valid"].tolist() for b in batches][-1] == [True, True, False, False]
    texts = [t for b in batches for t, v in zip(b["prompt_text"], b["valid"], strict=True) if v]
    assert texts == [
        format_prompt(tok, r["prompt"], suffix=" Go.", system=None, chat=True) for r in records
    ]
    for b in batches:
        assert b["prompt_ids"].shape == (4, b["prompt_ids"].shape[1])
        for ids, mask, text in zip(
            b["prompt_ids"], b["prompt_mask"], b["prompt_text"], strict=True
        ):
            assert tok.decode(ids[mask]) == text and mask[-1]
    answers = [a for b in batches for a, v in zip(b["answer"], b["valid"], strict=True) if v]
    assert answers == [r["answer"] for r in records]
    with pytest.raises(ValueError, match=r"record 0 .*max_prompt_len 10"):
        encode_prompts(records, tok, batch_size=4, **CHAT, max_prompt_len=10)


def test_lengths_left_at_zero_fit_the_data(tok, tmp_path):
    """0 = fitted: the longest prompt / trace (+ end token) counted by hand on the character
    tokenizer, rounded up to 32; rollouts get the traces' room; set values are kept."""
    from redjax import config
    from redjax.data.task import fit_lengths, tokenize_train

    records = [
        {"prompt": "p" * 40, "answer": "1", "solution": "s" * 70},
        {"prompt": "What is 1 + 2?", "answer": "3", "solution": "3"},
        {"prompt": "q", "answer": "2"},
    ]
    zeros = ["data.max_prompt_len=0", "data.max_offline_len=0", "rollout.max_new_tokens=0"]
    cfg = config.load(None, zeros)  # default.yaml: plain prompts with suffix "\n"
    fitted = fit_lengths(cfg, tokenize_train(cfg, records, tok))
    assert len(format_prompt(tok, "p" * 40, suffix="\n", system=None, chat=False)) == 41
    assert (fitted.data.max_prompt_len, fitted.data.max_offline_len) == (64, 96)  # 41, 71
    assert fitted.rollout.max_new_tokens == 96
    kept_cfg = config.load(None, [*zeros[:2], "rollout.max_new_tokens=8"])
    kept = fit_lengths(kept_cfg, tokenize_train(kept_cfg, records, tok))
    assert kept.rollout.max_new_tokens == 8
    with pytest.raises(ValueError, match="has a solution .* set them"):
        fit_lengths(cfg, tokenize_train(cfg, records[2:], tok))
