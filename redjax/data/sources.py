"""Read prompt / answer / offline-solution records from JSONL, JSON and Parquet files.

Every record comes out as {"prompt": str, "answer": str, "solution": str | None,
"source": str}, plus "system": str when the row has a system prompt (a chat record's system
turn, or a "system" column; the pipeline formats that record's prompt with it), and "row":
dict, the row's columns as the file has them (`row_columns`: all of them, "*", or those
named; absent when that keeps none), for reward functions that read a column such as test
cases. Column names follow a field map: a preset of PRESETS by name (default, openr1, numina, gsm8k, math, aime,
messages), "auto" to pick the first preset whose columns the first row has, or an explicit dict
{"prompt": col, "answer": col, "solution": col, "source": col, "system": col} (all but prompt
and answer optional). Columns are matched exactly first, then ignoring case. "source" is the
row's "source" column when it has one, else the file name without its extension.

Bad input raises ValueError naming the file, the line (JSONL, 1-based) or row (Parquet and
JSON arrays, 0-based) and the field. With on_error="skip" bad rows are skipped; pass a dict
as `stats` to get the counts back: {"rows", "records", "skipped", "errors" (the first few
messages), "fields" (the field map used)}.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from redjax import hub
from redjax.rewards.extract import last_boxed  # the verifier's own extractor: gold = what it reads

MAX_KEPT_ERRORS = 10
ALL_COLUMNS = ("*",)  # row_columns that keep every column of a row in its record's "row"

log = logging.getLogger(__name__)


class RowError(Exception):
    """A problem with one field of one row; the reader adds file and line."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"field {self.field!r}: {self.message}" if self.field else self.message


def _column(row: dict, name: str) -> Any:
    """row[name], else the value of the column whose name equals `name` ignoring case."""
    if name in row:
        return row[name]
    lower = name.lower()
    for key, value in row.items():
        if isinstance(key, str) and key.lower() == lower:
            return value
    return None


def _has(row: dict, name: str) -> bool:
    """Whether the row has column `name` (ignoring case)."""
    lower = name.lower()
    return any(isinstance(k, str) and k.lower() == lower for k in row)


def _text(value: Any, field: str, *, required: bool) -> str | None:
    """A field value as text; None for a missing optional one."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RowError(field, f"is not valid UTF-8 ({e})") from None
    if isinstance(value, bool):
        raise RowError(field, f"expected text, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int | float):
        value = str(value)
    if value is not None and not isinstance(value, str):
        raise RowError(field, f"expected text, got {type(value).__name__}")
    if value is None or not value.strip():
        if required:
            raise RowError(field, "is missing" if value is None else "is empty")
        return None
    return value


def _gsm8k_solution(raw: str) -> tuple[str, str]:
    """(gold, solution) from a GSM8K answer: text before '####', calculator notes removed."""
    body, gold = raw.rsplit("####", 1)
    gold = gold.strip()
    if re.fullmatch(r"-?[\d,]+(\.\d+)?", gold):
        gold = gold.replace(",", "")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return gold, f"{body}\nThe final answer is \\boxed{{{gold}}}"


def _boxed_answer(solution: str | None, field: str) -> str:
    """The last \\boxed{} of a solution: the gold the verifier reads from a trace."""
    answer = last_boxed(solution) if solution else None
    if not answer:
        raise RowError(field, "has no \\boxed{...} answer (and the row no answer column)")
    return answer


def _record(prompt: str, answer: str, solution: str | None = None, **extra: Any) -> dict:
    """A converted row (answer stripped); `extra` holds source / system when a preset sets them."""
    return {"prompt": prompt, "answer": answer.strip(), "solution": solution, **extra}


def _default(row: dict) -> dict:
    """Columns prompt, answer and optionally solution (what redjax writes)."""
    return _mapped(row, {"prompt": "prompt", "answer": "answer", "solution": "solution"})


def _mapped(row: dict, fields: dict) -> dict:
    """A dict field map {prompt, answer[, solution, source, system]: column}."""
    prompt = _text(_column(row, fields["prompt"]), fields["prompt"], required=True)
    answer = _text(_column(row, fields["answer"]), fields["answer"], required=True)
    extra = {}
    for key in ("solution", "source", "system"):
        if fields.get(key):
            extra[key] = _text(_column(row, fields[key]), fields[key], required=False)
    return _record(prompt, answer, **extra)


def _openr1(row: dict) -> dict:
    """OpenR1-Math-220k: problem, answer; the first generation marked correct by
    correctness_math_verify (else the first), else the solution column, as the trace."""
    prompt = _text(_column(row, "problem"), "problem", required=True)
    answer = _text(_column(row, "answer"), "answer", required=True)
    generations = _column(row, "generations")
    if isinstance(generations, list | tuple) and generations:
        correct = _column(row, "correctness_math_verify")
        pick = 0
        if isinstance(correct, list | tuple):
            pick = next((i for i, ok in enumerate(correct) if ok is True), 0)
        solution = _text(generations[pick], "generations", required=False)
    else:
        solution = _text(_column(row, "solution"), "solution", required=False)
    return _record(prompt, answer, solution)


def _math(row: dict) -> dict:
    """MATH / MATH-500 (also AIME files with a solution): problem, solution, answer or else the
    solution's last \\boxed{}."""
    prompt = _text(_column(row, "problem"), "problem", required=True)
    answer = _text(_column(row, "answer"), "answer", required=False)
    solution = _text(_column(row, "solution"), "solution", required=answer is None)
    return _record(prompt, answer or _boxed_answer(solution, "solution"), solution)


def _numina(row: dict) -> dict:
    """NuminaMath-CoT / 1.5: problem, solution, source; the answer column unless it is 1.5's
    'notfound' (then the solution's \\boxed{}); a 'proof' row has no answer to check."""
    answer = _text(_column(row, "answer"), "answer", required=False)
    if answer is not None and answer.strip().lower() == "proof":
        raise RowError("answer", "is 'proof': no final answer to check")
    if answer is not None and answer.strip().lower() == "notfound":
        row = {k: v for k, v in row.items() if str(k).lower() != "answer"}
    return _math(row)


def _gsm8k(row: dict) -> dict:
    """GSM8K: question, answer with the reasoning before '#### N' (N is the gold)."""
    prompt = _text(_column(row, "question"), "question", required=True)
    raw = _text(_column(row, "answer"), "answer", required=True)
    if "####" not in raw:
        raise RowError("answer", "has no '####' before the final answer")
    gold, solution = _gsm8k_solution(raw)
    if not gold:
        raise RowError("answer", "is empty after '####'")
    return _record(prompt, gold, solution)


def _aime(row: dict) -> dict:
    """AIME-style files: problem (or question) and answer, often id / year; a solution column
    is kept as the trace when there is one."""
    name = "problem" if _has(row, "problem") else "question"
    prompt = _text(_column(row, name), name, required=True)
    answer = _text(_column(row, "answer"), "answer", required=True)
    return _record(prompt, answer, _text(_column(row, "solution"), "solution", required=False))


def _turns(row: dict) -> list[tuple[str, str]]:
    """(role, content) of a row's `messages` (a list of {role, content}, or that as JSON text)."""
    messages = _column(row, "messages")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise RowError("messages", "is text but not a JSON list of turns") from None
    if not isinstance(messages, list | tuple) or not messages:
        raise RowError("messages", "is missing" if messages is None else "expected a list of turns")
    turns = []
    for i, turn in enumerate(messages):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ("system", "user", "assistant"):
            raise RowError("messages", f"turn {i} has no role system / user / assistant")
        turns.append((role, _text(turn.get("content"), f"messages[{i}].content", required=True)))
    return turns


def _messages(row: dict) -> dict:
    """Chat records: prompt = the user turn(s) before the last assistant turn, solution = that
    turn, system = the system turn; answer = answer / final_answer / gold, else its \\boxed{}."""
    turns = _turns(row)
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    before = turns if last is None else turns[:last]
    if any(role == "assistant" for role, _ in before):
        raise RowError("messages", "has several assistant turns; one exchange per record")
    users = [text for role, text in before if role == "user"]
    if not users:
        raise RowError("messages", "has no user turn before the assistant turn")
    system = "\n\n".join(text for role, text in before if role == "system") or None
    solution = None if last is None else turns[last][1]
    answer = None
    for name in ("answer", "final_answer", "gold"):
        answer = answer or _text(_column(row, name), name, required=False)
    answer = answer or _boxed_answer(solution, "messages")
    extra = {"system": system} if system else {}
    return _record("\n\n".join(users), answer, solution, **extra)


def _any(row: dict, *names: str) -> bool:
    """Whether the row has one of the columns."""
    return any(_has(row, n) for n in names)


# Each preset: (does a first row look like this export, row -> record). "auto" picks the first
# preset, in this order, whose test the first row passes; a new export is one entry.
PRESETS: dict[str, tuple[Callable[[dict], bool], Callable[[dict], dict]]] = {
    "default": (lambda r: _has(r, "prompt") and _has(r, "answer"), _default),
    "openr1": (lambda r: _has(r, "problem") and _has(r, "generations"), _openr1),
    "numina": (
        lambda r: (
            _has(r, "problem")
            and _has(r, "solution")
            and _any(r, "messages", "problem_type", "synthetic")
        ),
        _numina,
    ),  # fmt: skip
    "gsm8k": (lambda r: _has(r, "question") and "####" in str(_column(r, "answer")), _gsm8k),
    "math": (lambda r: _has(r, "problem") and _has(r, "solution"), _math),
    "aime": (lambda r: _any(r, "problem", "question") and _has(r, "answer"), _aime),
    "messages": (lambda r: _has(r, "messages"), _messages),
}
MAP_KEYS = ("prompt", "answer", "solution", "source", "system")


def convert_row(row: dict, fields: str | dict) -> dict:
    """The record {prompt, answer, solution[, source, system]} of one row under a field map;
    source and system come from the row's columns of those names unless the map sets them."""
    if isinstance(fields, dict):
        record = _mapped(row, fields)
    elif fields in PRESETS:
        record = PRESETS[fields][1](row)
    else:
        raise ValueError(
            f"unknown field map {fields!r}; use one of {tuple(PRESETS)}, 'auto' or a dict"
        )
    for key in ("source", "system"):
        if key not in record:
            value = _column(row, key)
            record[key] = value if isinstance(value, str) and value.strip() else None
    return record


def detect_fields(row: dict) -> str:
    """The first preset whose columns the row has; RowError listing the columns otherwise."""
    for name, (looks_like, _) in PRESETS.items():
        if looks_like(row):
            return name
    raise RowError(
        None,
        f"cannot detect the field map from columns {sorted(map(str, row))}; "
        f"pass fields= one of {tuple(PRESETS)} or a dict {{'prompt': ..., 'answer': ...}}",
    )


def check_fields(fields: str | dict) -> None:
    """Raises ValueError for a field map that names no known preset or lacks columns."""
    if isinstance(fields, dict):
        missing = {"prompt", "answer"} - set(fields)
        unknown = set(fields) - set(MAP_KEYS)
        if missing or unknown:
            raise ValueError(
                f"field map {fields} must map 'prompt' and 'answer' (and optionally "
                f"'solution', 'source', 'system'); missing {sorted(missing)}, "
                f"unknown {sorted(unknown)}"
            )
    elif fields not in (*PRESETS, "auto"):
        raise ValueError(
            f"unknown field map {fields!r}; use one of {tuple(PRESETS)}, 'auto' or a map "
            "{prompt: FIELD, answer: FIELD, solution: FIELD}"
        )


def _jsonl_rows(path: str, data: bytes) -> Iterator[tuple[str, Any]]:
    """(location, row or RowError) for each non-blank line."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield where, RowError(None, f"is not valid UTF-8 ({e})")
            continue
        except json.JSONDecodeError as e:
            yield where, RowError(None, f"malformed JSON ({e})")
            continue
        if not isinstance(row, dict):
            yield where, RowError(None, f"expected a JSON object, got {type(row).__name__}")
            continue
        yield where, row


def _json_rows(path: str) -> Iterator[tuple[str, Any]]:
    """Rows of a .json file: an array of objects, or JSON Lines."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.lstrip().startswith(b"["):
        yield from _jsonl_rows(path, data)
        return
    try:
        items = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid UTF-8 JSON array ({e})") from None
    for index, row in enumerate(items):
        where = f"row {index}"
        if not isinstance(row, dict):
            yield where, RowError(None, f"expected a JSON object, got {type(row).__name__}")
        else:
            yield where, row


def _parquet_rows(path: str) -> Iterator[tuple[str, Any]]:
    """Rows of a Parquet file, read batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    index = 0
    for batch in file.iter_batches(batch_size=1024):
        columns = {}
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            try:
                columns[name] = column.to_pylist()
            except (UnicodeDecodeError, pa.ArrowException):
                # Invalid UTF-8 in a string column: read it as bytes to find the bad rows.
                columns[name] = column.cast(pa.binary()).to_pylist()
        for i in range(batch.num_rows):
            yield f"row {index}", {name: values[i] for name, values in columns.items()}
            index += 1


def _rows(path: str) -> Iterator[tuple[str, Any]]:
    """(location, row or RowError) for every row of a supported file."""
    if path.endswith(".jsonl"):
        with open(path, "rb") as f:
            yield from _jsonl_rows(path, f.read())
    elif path.endswith(".json"):
        yield from _json_rows(path)
    elif path.endswith(".parquet"):
        yield from _parquet_rows(path)
    else:
        raise ValueError(f"{path}: unsupported file type; use .jsonl, .json or .parquet")


def row_of(row: dict, columns: Sequence[str]) -> dict:
    """The columns of a row a record keeps: all of them for ALL_COLUMNS, else those named that
    the row has (matched as `_column` does, kept under the name given)."""
    if tuple(columns) == ALL_COLUMNS:
        return dict(row)
    return {name: _column(row, name) for name in columns if _has(row, name)}


def load_records(
    path: str,
    *,
    fields: str | dict = "auto",
    on_error: str = "raise",
    stats: dict | None = None,
    row_columns: Sequence[str] = ALL_COLUMNS,
) -> list[dict]:
    """Reads a data file (or a hub dataset's file, hf://datasets/...) into records {prompt,
    answer, solution, source, row} (see module doc)."""
    path = hub.data_file(os.fspath(path))
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    check_fields(fields)
    default_source = os.path.basename(path).split(".")[0]
    records, errors, rows, skipped = [], [], 0, 0
    resolved = None if fields == "auto" else fields
    for where, row in _rows(path):
        rows += 1
        try:
            if isinstance(row, RowError):
                raise row
            if resolved is None:
                try:
                    resolved = detect_fields(row)
                except RowError as e:
                    raise ValueError(f"{path}, {where}: {e}") from None
            record = convert_row(row, resolved)
        except RowError as e:
            message = f"{path}, {where}: {e}"
            if on_error == "raise":
                raise ValueError(message) from None
            skipped += 1
            if len(errors) < MAX_KEPT_ERRORS:
                errors.append(message)
            continue
        record["source"] = record["source"] or default_source
        if record["system"] is None:
            del record["system"]  # only chat records with a system turn carry one
        kept = row_of(row, row_columns)
        if kept:  # like "system": only when there is something to carry
            record["row"] = kept
        records.append(record)
    if stats is not None:
        stats.update(
            rows=rows, records=len(records), skipped=skipped, errors=errors, fields=resolved
        )
    if not records:
        detail = f"; first error: {errors[0]}" if errors else ""
        raise ValueError(f"{path}: no records ({rows} rows, {skipped} skipped){detail}")
    if skipped:
        log.warning("%s: skipped %d of %d rows; first: %s", path, skipped, rows, errors[0])
    return records
