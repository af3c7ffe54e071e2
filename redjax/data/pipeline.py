"""Grain pipeline: records -> formatted, tokenized, length-bucketed prompt batches.

Records are tokenized once up front (so length filtering is exact and counted), then a
grain ``MapDataset`` shuffles them with a seed, gives each host a disjoint slice of every
epoch, repeats forever and collates fixed-size batches. Batch k is a pure function of k,
so the loader state is just the next batch index: a restored loader yields exactly the
batches an uninterrupted one would.

Batch layout (B = batch size per host):
  prompt_ids   int32 [B, P]  formatted prompt, LEFT-padded with the pad id
  prompt_mask  bool  [B, P]
  offline_ids  int32 [B, O]  teacher solution + end token, RIGHT-padded (all pad if none)
  offline_mask bool  [B, O]
  has_offline  bool  [B]
  prompt_text, answer, solution, source: list[str] of length B (prompt_text = the formatted
  prompt, solution = "" when the record has none)
  record       list[dict] [B]  each prompt's record as read (prompt as in the data, answer,
                               solution, source, row, ...): what reward functions are given
P and O are the smallest bucket (default: powers of two from 16, and the maximum) that
holds the longest row, so a jitted step compiles a bounded number of times.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from redjax.shapes import data_bucket, default_buckets, left_pad, pad_cols, right_pad
from redjax.tokenizer import end_id, format_prompt, has_chat_template

ENCODE_CHUNK = 1024

log = logging.getLogger(__name__)


def _encode(tokenizer: Any, texts: list[str], *, add_special_tokens: bool) -> list[np.ndarray]:
    """Token ids of each text as int32 arrays, encoded in chunks (fast tokenizers batch)."""
    out = []
    for i in range(0, len(texts), ENCODE_CHUNK):
        chunk = tokenizer(texts[i : i + ENCODE_CHUNK], add_special_tokens=add_special_tokens)
        out.extend(np.asarray(ids, np.int32) for ids in chunk["input_ids"])
    return out


def _check_records(records: Sequence[dict]) -> None:
    """ValueError naming the first record that lacks a text prompt or answer."""
    if not records:
        raise ValueError("no records to load")
    for i, r in enumerate(records):
        for key in ("prompt", "answer"):
            if not isinstance(r.get(key), str):
                raise ValueError(f"record {i} has no text field {key!r}: {r!r:.200}")


def _format_all(
    records: Sequence[dict], tokenizer: Any, *, suffix: str, chat: bool, system: str | None
) -> tuple[list[str], list[np.ndarray]]:
    """Formatted prompt texts and their token ids (special tokens only when not templated).
    A record's own system prompt (a chat record's system turn) wins over data.system."""
    texts = [
        format_prompt(
            tokenizer, r["prompt"], suffix=suffix, system=r.get("system") or system, chat=chat
        )
        for r in records
    ]
    templated = chat and has_chat_template(tokenizer)
    return texts, _encode(tokenizer, texts, add_special_tokens=not templated)


def tokenize(
    records: Sequence[dict],
    tokenizer: Any,
    *,
    prompt_suffix: str,
    chat: bool,
    system: str | None,
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(formatted prompt texts, their token ids, offline traces) of the records. A trace is the
    solution's tokens and the end token (the chat end-of-turn token when templated, else eos);
    empty when the record has no solution."""
    _check_records(records)
    texts, prompt_ids = _format_all(
        records, tokenizer, suffix=prompt_suffix, chat=chat, system=system
    )
    solutions = [r.get("solution") or "" for r in records]
    with_solution = [i for i, s in enumerate(solutions) if s]
    encoded = _encode(tokenizer, [solutions[i] for i in with_solution], add_special_tokens=False)
    solution_ids = dict(zip(with_solution, encoded, strict=True))
    end = np.asarray([end_id(tokenizer, chat=chat)], np.int32)
    empty = np.zeros([0], np.int32)
    traces = [
        np.concatenate([solution_ids[i], end]) if i in solution_ids else empty
        for i in range(len(records))
    ]
    return texts, prompt_ids, traces


def prepare(
    records: Sequence[dict],
    tokenizer: Any,
    *,
    max_prompt_len: int,
    max_offline_len: int,
    prompt_suffix: str,
    chat: bool,
    system: str | None,
    drop_long: bool = True,
    tokenized: tuple | None = None,
) -> tuple[list[dict], dict]:
    """Tokenized examples that fit the length limits, and counts of what was dropped.

    The offline trace (`tokenize`) counts its end token. With drop_long=False a record over a
    limit raises ValueError instead. `tokenized`: the records' `tokenize` output with these
    settings, when the caller has it already (it is not computed twice).
    """
    texts, prompt_ids, traces = tokenized or tokenize(
        records, tokenizer, prompt_suffix=prompt_suffix, chat=chat, system=system
    )
    solutions = [r.get("solution") or "" for r in records]
    examples, long_prompt, long_offline = [], 0, 0
    for i, r in enumerate(records):
        offline = traces[i]
        too_long = None
        if len(prompt_ids[i]) > max_prompt_len:
            long_prompt += 1
            too_long = f"prompt has {len(prompt_ids[i])} tokens > max_prompt_len {max_prompt_len}"
        elif len(offline) > max_offline_len:
            long_offline += 1
            too_long = (
                f"offline trace has {len(offline)} tokens > max_offline_len {max_offline_len}"
            )
        if too_long:
            if not drop_long:
                raise ValueError(f"record {i} (source {r.get('source')!r}): {too_long}")
            continue
        examples.append(
            {
                "prompt_ids": prompt_ids[i],
                "offline_ids": offline,
                "prompt": texts[i],
                "answer": r["answer"],
                "solution": solutions[i],
                "source": str(r.get("source") or ""),
                "record": r,
            }
        )
    stats = {
        "records": len(records),
        "kept": len(examples),
        "dropped_long_prompt": long_prompt,
        "dropped_long_offline": long_offline,
    }
    return examples, stats


def collate(
    examples: Sequence[dict],
    *,
    pad_id: int,
    prompt_buckets: Sequence[int],
    offline_buckets: Sequence[int],
) -> dict:
    """One batch (layout in the module doc) from prepared examples."""
    prompts = [e["prompt_ids"] for e in examples]
    offline = [e["offline_ids"] for e in examples]
    width_p = data_bucket(max(len(p) for p in prompts), prompt_buckets)
    width_o = data_bucket(max(1, max(len(o) for o in offline)), offline_buckets)
    prompt_ids, prompt_mask = left_pad(prompts, width_p, pad_id)
    offline_ids, offline_mask = right_pad(offline, width_o, pad_id)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "offline_ids": offline_ids,
        "offline_mask": offline_mask,
        "has_offline": np.asarray([len(o) > 0 for o in offline], bool),
        "prompt_text": [e["prompt"] for e in examples],
        "answer": [e["answer"] for e in examples],
        "solution": [e["solution"] for e in examples],
        "source": [e["source"] for e in examples],
        "record": [e["record"] for e in examples],
    }


def concat(batches: Sequence[dict], pad_id: int) -> dict:
    """The rows of `batches` (layout in the module doc) as one batch: prompts left-padded and
    traces right-padded to the widest, the text lists joined."""
    out = {}
    for key, value in batches[0].items():
        if isinstance(value, list):
            out[key] = [x for b in batches for x in b[key]]
        elif value.ndim == 1:
            out[key] = np.concatenate([b[key] for b in batches])
        else:
            width = max(b[key].shape[1] for b in batches)
            fill = pad_id if key.endswith("_ids") else False
            left = key.startswith("prompt")
            out[key] = np.concatenate([pad_cols(b[key], width, fill, left=left) for b in batches])
    return out


def _fingerprint(examples: Sequence[dict], settings: dict) -> str:
    """A short hash of the kept data and the settings that fix the batch order."""
    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    for e in examples:
        h.update(e["prompt"].encode("utf-8", "replace"))
        h.update(e["solution"].encode("utf-8", "replace"))
    return h.hexdigest()[:16]


class Loader:
    """Endless iterator over batches of a grain MapDataset, with a resumable state."""

    def __init__(self, dataset: grain.MapDataset, stats: dict, fingerprint: str):
        self._dataset = dataset
        self._next = 0
        self.stats = stats
        self.fingerprint = fingerprint

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict:
        batch = self._dataset[self._next]
        self._next += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch index and the data fingerprint."""
        return {"next_batch": self._next, "fingerprint": self.fingerprint}

    def set_state(self, state: dict) -> None:
        """Moves to a saved position; ValueError if it was saved for other data or settings."""
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"data loader state was saved for other data or settings (fingerprint "
                f"{state.get('fingerprint')!r}, this loader {self.fingerprint!r}): the "
                "records, seed, batch size, shards and length limits must match to resume"
            )
        self._next = int(state["next_batch"])


def _log_stats(stats: dict, max_prompt: int, max_offline: int, shard: int, shards: int, b: int):
    """One info line: what was kept and dropped, and this shard's share."""
    log.info(
        "data: kept %d of %d records (%d prompts > %d tokens, %d offline traces > %d tokens "
        "dropped); shard %d/%d: %d records, %d batches of %d per epoch",
        stats["kept"],
        stats["records"],
        stats["dropped_long_prompt"],
        max_prompt,
        stats["dropped_long_offline"],
        max_offline,
        shard,
        shards,
        stats["shard_records"],
        stats["batches_per_epoch"],
        b,
    )


def make_loader(
    records: Sequence[dict],
    tokenizer: Any,
    *,
    batch_size: int,
    seed: int,
    max_prompt_len: int,
    max_offline_len: int,
    prompt_suffix: str,
    chat: bool,
    system: str | None,
    shard_index: int = 0,
    shard_count: int = 1,
    drop_long: bool = True,
    prompt_buckets: Sequence[int] | None = None,
    offline_buckets: Sequence[int] | None = None,
    tokenized: tuple | None = None,
) -> Loader:
    """An endless, shuffled, resumable loader of this host's batches (`batch_size` per host).

    Every epoch, every host shuffles all records anew with the same seed and takes positions
    shard_index, shard_index + shard_count, ... of that epoch's order (the last
    len % shard_count positions of an epoch are left out so hosts stay in step).
    Records over the length limits are dropped and counted in `loader.stats`. `tokenized`:
    as in `prepare`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    examples, stats = prepare(
        records,
        tokenizer,
        max_prompt_len=max_prompt_len,
        max_offline_len=max_offline_len,
        prompt_suffix=prompt_suffix,
        chat=chat,
        system=system,
        drop_long=drop_long,
        tokenized=tokenized,
    )
    per_shard = len(examples) // shard_count
    if per_shard == 0:
        raise ValueError(
            f"no records left for {shard_count} shards: {stats['kept']} of {stats['records']} "
            f"kept ({stats['dropped_long_prompt']} prompts over {max_prompt_len} tokens, "
            f"{stats['dropped_long_offline']} offline traces over {max_offline_len})"
        )
    stats.update(shard_records=per_shard, batches_per_epoch=per_shard // batch_size)
    prompt_buckets = tuple(prompt_buckets or default_buckets(max_prompt_len))
    offline_buckets = tuple(offline_buckets or default_buckets(max_offline_len))
    pad_id = int(tokenizer.pad_token_id)

    def batch_fn(batch: Sequence[dict]) -> dict:
        return collate(
            batch, pad_id=pad_id, prompt_buckets=prompt_buckets, offline_buckets=offline_buckets
        )

    # Epoch e is a fresh shuffle of all records (grain seeds it with seed + e); this host takes
    # its positions shard_index, shard_index + shard_count, ... of every epoch.
    order, n = grain.MapDataset.source(examples).shuffle(seed=seed % 2**32), len(examples)
    position = lambda i, j: (i // per_shard) * n + shard_index + j * shard_count
    dataset = (
        grain.MapDataset.range(per_shard)
        .repeat()
        .map_with_index(lambda i, j: order[position(i, j)])
        .batch(batch_size, drop_remainder=True, batch_fn=batch_fn)
    )
    settings = {
        "seed": seed,
        "batch_size": batch_size,
        "shards": shard_count,  # not the index: every host restores process 0's saved state
        "buckets": (prompt_buckets, offline_buckets),
        "pad_id": pad_id,
    }
    _log_stats(stats, max_prompt_len, max_offline_len, shard_index, shard_count, batch_size)
    return Loader(dataset, stats, _fingerprint(examples, settings))


def encode_prompts(
    records: Sequence[dict],
    tokenizer: Any,
    *,
    batch_size: int,
    prompt_suffix: str,
    chat: bool,
    system: str | None,
    max_prompt_len: int | None = None,
    buckets: Sequence[int] | None = None,
) -> list[dict]:
    """Prompt batches for evaluation, in record order, formatted exactly as in training.

    Each batch has prompt_ids / prompt_mask (left-padded, bucketed), "valid" bool [B]
    and lists prompt_text / answer / solution / source / record. Every batch has `batch_size` rows:
    the last one is filled up with copies of its first record, marked valid=False.
    A prompt over `max_prompt_len` raises ValueError (evaluation drops nothing).
    """
    _check_records(records)
    texts, ids = _format_all(records, tokenizer, suffix=prompt_suffix, chat=chat, system=system)
    longest = max(len(x) for x in ids)
    if max_prompt_len is not None and longest > max_prompt_len:
        i = next(i for i, x in enumerate(ids) if len(x) > max_prompt_len)
        raise ValueError(
            f"record {i} (source {records[i].get('source')!r}): prompt has {len(ids[i])} "
            f"tokens > max_prompt_len {max_prompt_len}"
        )
    buckets = tuple(buckets or default_buckets(max_prompt_len or longest))
    pad_id = int(tokenizer.pad_token_id)
    batches = []
    for start in range(0, len(records), batch_size):
        rows = list(range(start, min(start + batch_size, len(records))))
        valid = [True] * len(rows) + [False] * (batch_size - len(rows))
        rows += [rows[0]] * (batch_size - len(rows))
        width = data_bucket(max(len(ids[i]) for i in rows), buckets)
        prompt_ids, prompt_mask = left_pad([ids[i] for i in rows], width, pad_id)
        batches.append(
            {
                "prompt_ids": prompt_ids,
                "prompt_mask": prompt_mask,
                "valid": np.asarray(valid, bool),
                "prompt_text": [texts[i] for i in rows],
                "answer": [records[i]["answer"] for i in rows],
                "solution": [records[i].get("solution") or "" for i in rows],
                "source": [str(records[i].get("source") or "") for i in rows],
                "record": [records[i] for i in rows],
            }
        )
    return batches
