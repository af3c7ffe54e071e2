"""Data as people have it: chat records and the common math exports, each read from a tiny
JSONL and Parquet file by its preset and by "auto", every field of every record checked."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from redjax.data import encode_prompts, load_records
from redjax.data.sources import PRESETS
from redjax.tokenizer import make_char_tokenizer

FORMATS = ["jsonl", "parquet"]


def write(path, rows, fmt):
    """Writes rows as JSONL or Parquet (pyarrow infers list / struct columns); returns the path."""
    path = f"{path}.{fmt}"
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:  # every row with every column (from_pylist takes the columns of the first row)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), path)
    return path


def read(tmp_path, name, rows, fmt, fields, **kw):
    """(records, stats) of rows written to name.fmt and read under `fields` (no row columns
    kept unless `row_columns` is given: these tests compare the converted fields)."""
    stats = {}
    kw.setdefault("row_columns", [])
    return load_records(write(tmp_path / name, rows, fmt), fields=fields, stats=stats, **kw), stats


def chat(*turns):
    """A messages list from (role, content) pairs."""
    return [{"role": role, "content": content} for role, content in turns]


TRACE = "2 + 2 = 4, so the answer is $\\boxed{4}$."


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fields", ["messages", "auto"])
def test_messages_records(tmp_path, fmt, fields):
    rows = [
        {"messages": chat(("user", "What is 2 + 2?"), ("assistant", TRACE))},
        {
            "messages": chat(
                ("system", "Reason step by step."),
                ("user", "Add the numbers."),
                ("user", "2 and 2."),
                ("assistant", TRACE),
            ),
            "answer": "four",
        },
        {"messages": chat(("user", "Q3"), ("assistant", "A3")), "final_answer": 3},
        {"messages": chat(("user", "Q4"), ("assistant", "A4")), "gold": "4", "source": "mine"},
        {"messages": chat(("system", "Be brief."), ("user", "Q5")), "answer": "5"},  # no trace
    ]
    records, stats = read(tmp_path, "chats", rows, fmt, fields)
    assert stats == {"rows": 5, "records": 5, "skipped": 0, "errors": [], "fields": "messages"}
    assert records == [
        {"prompt": "What is 2 + 2?", "answer": "4", "solution": TRACE, "source": "chats"},
        {
            "prompt": "Add the numbers.\n\n2 and 2.",
            "answer": "four",
            "solution": TRACE,
            "source": "chats",
            "system": "Reason step by step.",
        },
        {"prompt": "Q3", "answer": "3", "solution": "A3", "source": "chats"},
        {"prompt": "Q4", "answer": "4", "solution": "A4", "source": "mine"},
        {
            "prompt": "Q5",
            "answer": "5",
            "solution": None,
            "source": "chats",
            "system": "Be brief.",
        },
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_messages_errors_name_file_row_and_field(tmp_path, fmt):
    rows = [
        {"messages": chat(("user", "Q0"), ("assistant", TRACE))},
        {"messages": chat(("user", "Q1"), ("assistant", "no boxed answer here"))},
        {"messages": chat(("user", "Q2"), ("assistant", "A"), ("user", "Q"), ("assistant", "B"))},
        {"messages": chat(("system", "S"), ("assistant", TRACE))},
    ]
    path = write(tmp_path / "bad", rows, fmt)
    where = "line 2" if fmt == "jsonl" else "row 1"
    with pytest.raises(ValueError, match=rf"bad\.{fmt}, {where}: field 'messages': has no \\boxed"):
        load_records(path)
    stats = {}
    records = load_records(path, on_error="skip", stats=stats)
    assert [r["prompt"] for r in records] == ["Q0"]
    assert stats["skipped"] == 3 and stats["rows"] == 4
    assert "several assistant turns" in stats["errors"][1]
    assert "no user turn" in stats["errors"][2]


def test_messages_as_json_text_and_bad_turns(tmp_path):
    rows = [
        {"messages": json.dumps(chat(("user", "Q"), ("assistant", TRACE)))},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": chat(("user", None), ("assistant", TRACE))},
    ]
    records, stats = read(tmp_path, "m", rows, "jsonl", "messages", on_error="skip")
    assert records == [{"prompt": "Q", "answer": "4", "solution": TRACE, "source": "m"}]
    assert "line 2: field 'messages': turn 0 has no role" in stats["errors"][0]
    assert "line 3: field 'messages[0].content': is missing" in stats["errors"][1]


def openr1_row(i, correct):
    """A row with every column of OpenR1-Math-220k (its default split)."""
    return {
        "problem": f"P{i}",
        "solution": f"human solution {i}",
        "answer": str(i),
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "source": "olympiads",
        "uuid": f"uuid-{i}",
        "is_reasoning_complete": [True, True],
        "generations": [f"<think>g{i}a</think> \\boxed{{{i}}}", f"<think>g{i}b</think>"],
        "correctness_math_verify": correct,
        "correctness_llama": None,
        "finish_reasons": None,
        "correctness_count": sum(correct),
        "messages": chat(("user", f"P{i}"), ("assistant", f"<think>g{i}a</think>")),
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fields", ["openr1", "auto"])
def test_openr1_math_220k(tmp_path, fmt, fields):
    rows = [
        openr1_row(1, [False, True]),
        openr1_row(2, [True, True]),
        openr1_row(3, [False, False]),
    ]
    records, stats = read(tmp_path, "train-00000-of-00010", rows, fmt, fields)
    assert stats["fields"] == "openr1"
    assert records == [
        {"prompt": "P1", "answer": "1", "solution": "<think>g1b</think>", "source": "olympiads"},
        {
            "prompt": "P2",
            "answer": "2",
            "solution": "<think>g2a</think> \\boxed{2}",
            "source": "olympiads",
        },
        {  # none verified correct: the first generation
            "prompt": "P3",
            "answer": "3",
            "solution": "<think>g3a</think> \\boxed{3}",
            "source": "olympiads",
        },
    ]


NUMINA = "We have $x = 2$. Hence $\\boxed{2}$."


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fields", ["numina", "auto"])
def test_numinamath_cot(tmp_path, fmt, fields):
    rows = [
        {
            "source": "cn_k12",
            "problem": "Solve x + 1 = 3.",
            "solution": NUMINA,
            "messages": chat(("user", "Solve x + 1 = 3."), ("assistant", NUMINA)),
        }
    ]
    records, stats = read(tmp_path, "numina", rows, fmt, fields)
    assert stats["fields"] == "numina"
    assert records == [
        {"prompt": "Solve x + 1 = 3.", "answer": "2", "solution": NUMINA, "source": "cn_k12"}
    ]


def numina15(problem, answer, solution):
    """A row with the columns of NuminaMath-1.5."""
    return {
        "problem": problem,
        "solution": solution,
        "answer": answer,
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "problem_is_valid": "Yes",
        "solution_is_valid": "Yes",
        "source": "olympiads",
        "synthetic": False,
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fields", ["numina", "auto"])
def test_numinamath_1_5(tmp_path, fmt, fields):
    rows = [
        numina15("A", "7", "so 7. \\boxed{7}"),
        numina15("B", "notfound", NUMINA),  # 1.5's mark for an answer it did not extract
        numina15("C", "proof", "Suppose not. QED"),
    ]
    records, stats = read(tmp_path, "numina15", rows, fmt, fields, on_error="skip")
    assert stats["fields"] == "numina" and stats["skipped"] == 1
    where = "line 3" if fmt == "jsonl" else "row 2"
    assert stats["errors"] == [
        f"{tmp_path}/numina15.{fmt}, {where}: field 'answer': is 'proof': no final answer to check"
    ]
    assert records == [
        {"prompt": "A", "answer": "7", "solution": "so 7. \\boxed{7}", "source": "olympiads"},
        {"prompt": "B", "answer": "2", "solution": NUMINA, "source": "olympiads"},
    ]


MATH = "First $\\boxed{3}$ is wrong. So $x = \\boxed{\\frac{1}{2}}$."


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fields", ["math", "auto"])
def test_math_and_math_500(tmp_path, fmt, fields):
    math = [{"problem": "Find x.", "level": "Level 2", "type": "Algebra", "solution": MATH}]
    records, stats = read(tmp_path, "math", math, fmt, fields)
    assert stats["fields"] == "math"
    assert records == [
        {"prompt": "Find x.", "answer": "\\frac{1}{2}", "solution": MATH, "source": "math"}
    ]
    math500 = [
        {
            "problem": "Find y.",
            "solution": "So $y = \\boxed{5}$.",
            "answer": "5",
            "subject": "Algebra",
            "level": 2,
            "unique_id": "test/algebra/1.json",
        }
    ]
    records, stats = read(tmp_path, "test", math500, fmt, fields)
    assert stats["fields"] == "math"
    assert records == [
        {"prompt": "Find y.", "answer": "5", "solution": "So $y = \\boxed{5}$.", "source": "test"}
    ]


GSM8K = "She sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fields", ["gsm8k", "auto"])
def test_gsm8k(tmp_path, fmt, fields):
    records, stats = read(tmp_path, "main", [{"question": "Clips?", "answer": GSM8K}], fmt, fields)
    assert stats["fields"] == "gsm8k"
    assert records == [
        {
            "prompt": "Clips?",
            "answer": "72",
            "solution": "She sold 48/2 = 24 clips in May.\nIn all 48+24 = 72.\n"
            "The final answer is \\boxed{72}",
            "source": "main",
        }
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fields", ["aime", "auto"])
def test_aime_files(tmp_path, fmt, fields):
    rows = [{"id": 60, "problem": "Every morning Aya walks...", "answer": 204, "year": 2024}]
    records, stats = read(tmp_path, "aime_2024", rows, fmt, fields)
    assert stats["fields"] == "aime"
    assert records == [
        {
            "prompt": "Every morning Aya walks...",
            "answer": "204",
            "solution": None,
            "source": "aime_2024",
        }
    ]
    rows = [{"ID": "2025-I-1", "Question": "Find the sum...", "Answer": "70"}]
    records, stats = read(tmp_path, "aime25", rows, fmt, fields)
    assert stats["fields"] == "aime"
    assert records == [
        {"prompt": "Find the sum...", "answer": "70", "solution": None, "source": "aime25"}
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_answer_names_file_row_and_field(tmp_path, fmt):
    rows = [{"problem": "P0", "answer": 1}, {"problem": "P1", "answer": None}]
    path = write(tmp_path / "aime", rows, fmt)
    where = "line 2" if fmt == "jsonl" else "row 1"
    with pytest.raises(ValueError, match=rf"aime\.{fmt}, {where}: field 'answer': is missing"):
        load_records(path)
    stats = {}
    assert len(load_records(path, on_error="skip", stats=stats)) == 1
    assert (stats["rows"], stats["records"], stats["skipped"]) == (2, 1, 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dict_field_map_with_system(tmp_path, fmt):
    rows = [{"question": "Q", "final_answer": "1", "generation": "G", "sys": "S", "origin": "o"}]
    fields = {"prompt": "question", "answer": "final_answer", "solution": "generation"}
    records, _ = read(tmp_path, "own", rows, fmt, fields)
    assert records == [{"prompt": "Q", "answer": "1", "solution": "G", "source": "own"}]
    records, _ = read(tmp_path, "own", rows, fmt, {**fields, "system": "sys", "source": "origin"})
    assert records == [
        {"prompt": "Q", "answer": "1", "solution": "G", "source": "o", "system": "S"}
    ]


def test_every_preset_is_detected_from_its_own_columns():
    """Each preset's columns are detected as it: the detection order keeps them apart."""
    from redjax.data.sources import detect_fields

    rows = {
        "default": {"prompt": "p", "answer": "1"},
        "openr1": openr1_row(1, [True, False]),
        "numina": numina15("A", "7", "x"),
        "gsm8k": {"question": "q", "answer": GSM8K},
        "math": {"problem": "p", "solution": MATH, "level": "Level 1", "type": "Algebra"},
        "aime": {"id": 1, "problem": "p", "answer": 3, "year": 2024},
        "messages": {"messages": chat(("user", "q"), ("assistant", TRACE))},
    }
    assert list(rows) == list(PRESETS)
    assert {name: detect_fields(row) for name, row in rows.items()} == {n: n for n in rows}


def test_a_records_system_turn_formats_its_prompt(tmp_path):
    """The pipeline puts a chat record's system turn before its prompt, where data.system goes;
    a record without one gets data.system."""
    tok = make_char_tokenizer(str(tmp_path / "char"))
    records = [
        {"prompt": "Q1", "answer": "1", "solution": None, "source": "s", "system": "Own."},
        {"prompt": "Q2", "answer": "2", "solution": None, "source": "s"},
    ]
    (batch,) = encode_prompts(
        records, tok, batch_size=2, prompt_suffix="", chat=False, system="Config."
    )
    assert batch["prompt_text"] == ["Own.\n\nQ1", "Config.\n\nQ2"]
