"""Read prompt / answer / offline-solution records from JSONL, JSON and Parquet files.

Every record comes out as {"prompt": str, "answer": str, "solution": str | None,
"source": str}. Column names follow a field map: a preset by name ("default", "openr1",
"gsm8k", "math", or "auto" to detect one from the first row) or an explicit dict
{"prompt": col, "answer": col, "solution": col, "source": col} ("solution" and "source"
optional). Columns are matched exactly first, then ignoring case. "source" is the row's
"source" column when it has one, else the file name without its extension.

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
from collections.abc import Iterator
from typing import Any

from redjax.rewards.extract import last_boxed  # the verifier's own extractor: gold = what it reads

PRESETS = ("default", "openr1", "gsm8k", "math")
MAX_KEPT_ERRORS = 10

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


def _openr1_solution(row: dict) -> str | None:
    """The first generation marked correct (else the first), or the 'solution' column."""
    generations = _column(row, "generations")
    if isinstance(generations, list | tuple) and generations:
        correct = _column(row, "correctness_math_verify")
        pick = 0
        if isinstance(correct, list | tuple):
            pick = next((i for i, ok in enumerate(correct) if ok is True), 0)
        return _text(generations[pick], "generations", required=False)
    return _text(_column(row, "solution"), "solution", required=False)


def convert_row(row: dict, fields: str | dict) -> tuple[str, str, str | None, str | None]:
    """(prompt, answer, solution, source column) of one row under a field map."""
    source = _column(row, "source")
    source = source if isinstance(source, str) and source.strip() else None
    if isinstance(fields, dict):
        prompt = _text(_column(row, fields["prompt"]), fields["prompt"], required=True)
        answer = _text(_column(row, fields["answer"]), fields["answer"], required=True)
        solution = None
        if fields.get("solution"):
            solution = _text(_column(row, fields["solution"]), fields["solution"], required=False)
        if fields.get("source"):
            source = _text(_column(row, fields["source"]), fields["source"], required=False)
        return prompt, answer.strip(), solution, source
    if fields == "default":
        return convert_row(row, {"prompt": "prompt", "answer": "answer", "solution": "solution"})
    if fields == "openr1":
        prompt = _text(_column(row, "problem"), "problem", required=True)
        answer = _text(_column(row, "answer"), "answer", required=True)
        return prompt, answer.strip(), _openr1_solution(row), source
    if fields == "gsm8k":
        prompt = _text(_column(row, "question"), "question", required=True)
        raw = _text(_column(row, "answer"), "answer", required=True)
        if "####" not in raw:
            raise RowError("answer", "has no '####' before the final answer")
        gold, solution = _gsm8k_solution(raw)
        if not gold:
            raise RowError("answer", "is empty after '####'")
        return prompt, gold, solution, source
    if fields == "math":
        prompt = _text(_column(row, "problem"), "problem", required=True)
        solution = _text(_column(row, "solution"), "solution", required=True)
        answer = _text(_column(row, "answer"), "answer", required=False)
        if answer is None:
            answer = last_boxed(solution)
            if not answer:
                raise RowError("solution", "has no \\boxed{...} answer")
        return prompt, answer.strip(), solution, source
    raise ValueError(f"unknown field map {fields!r}; use one of {PRESETS}, 'auto' or a dict")


def detect_fields(row: dict) -> str:
    """The preset whose columns the row has; ValueError listing the columns otherwise."""
    if _has(row, "prompt") and _has(row, "answer"):
        return "default"
    if _has(row, "question") and _has(row, "answer"):
        return "gsm8k"
    if _has(row, "problem") and (_has(row, "generations") or _has(row, "answer")):
        return "openr1"
    if _has(row, "problem") and _has(row, "solution"):
        return "math"
    raise RowError(
        None,
        f"cannot detect the field map from columns {sorted(map(str, row))}; "
        f"pass fields= one of {PRESETS} or a dict {{'prompt': ..., 'answer': ...}}",
    )


def check_fields(fields: str | dict) -> None:
    """Raises ValueError for a field map that names no known preset or lacks columns."""
    if isinstance(fields, dict):
        missing = {"prompt", "answer"} - set(fields)
        unknown = set(fields) - {"prompt", "answer", "solution", "source"}
        if missing or unknown:
            raise ValueError(
                f"field map {fields} must map 'prompt' and 'answer' (and optionally "
                f"'solution', 'source'); missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
    elif fields not in (*PRESETS, "auto"):
        raise ValueError(
            f"unknown field map {fields!r}; use one of {PRESETS}, 'auto' or a map "
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


def load_records(
    path: str,
    *,
    fields: str | dict = "auto",
    on_error: str = "raise",
    stats: dict | None = None,
) -> list[dict]:
    """Reads a data file into records {prompt, answer, solution, source} (see module doc)."""
    path = os.fspath(path)
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
            prompt, answer, solution, source = convert_row(row, resolved)
        except RowError as e:
            message = f"{path}, {where}: {e}"
            if on_error == "raise":
                raise ValueError(message) from None
            skipped += 1
            if len(errors) < MAX_KEPT_ERRORS:
                errors.append(message)
            continue
        records.append(
            {
                "prompt": prompt,
                "answer": answer,
                "solution": solution,
                "source": source or default_source,
            }
        )
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
