"""Run logs: metrics.jsonl (one JSON object per logged step), TensorBoard and/or wandb, samples.

Only process 0 writes. Each record goes to its file in one append; `sync` flushes both files to
disk (at every checkpoint). On resume, records after the restored checkpoint's step are dropped,
a line torn by a kill is cut off, and a record of a step the resumed run repeats (its final
evaluation) is written once; TensorBoard purges the dropped steps. So a resumed run's logs read
like an uninterrupted one's. `train.report_to` names the viewers fed the same numbers:
"tensorboard" (run_dir/tb) and "wandb" (run_dir/wandb; the run continued on resume, but wandb
keeps the first value of a step logged twice).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger("redjax")
QUANTILES = (0.1, 0.5, 0.9)  # of a distribution metric, in metrics.jsonl
REPORTERS = ("tensorboard", "wandb")
WANDB_MISSING = "train.report_to has wandb, which is not installed: pip install 'redjax[wandb]'"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic | np.ndarray):
        return v.item() if np.ndim(v) == 0 else v.tolist()
    return v


def _kind(record: dict) -> tuple[int, bool]:
    """What a record is: its step, and whether it comes from an evaluation."""
    return record["step"], bool(record.get("eval")) or any(k.startswith("eval/") for k in record)


class Logger:
    def __init__(
        self,
        run_dir: str,
        start_step: int = 0,
        enabled: bool = True,
        report_to: Sequence[str] = ("tensorboard",),
        config: dict | None = None,
    ):
        unknown = sorted(set(report_to) - set(REPORTERS))
        if unknown:
            raise ValueError(f"report_to: unknown {unknown}; allowed: {', '.join(REPORTERS)}")
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.samples_path = os.path.join(run_dir, "samples.jsonl")
        self.tb = None
        self.wandb = None
        self.kept: set[tuple[int, bool]] = set()  # kinds of the records kept from before
        if not enabled:
            return
        for path in (self.path, self.samples_path):
            self.kept |= {(s, e) for s, e in repair(path, start_step) if s == start_step}
        if "tensorboard" in report_to:
            self.tb = _tensorboard(run_dir, start_step, config)
        if "wandb" in report_to:
            self.wandb = _wandb_run(run_dir, start_step, config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one metrics record and write each number as a TensorBoard scalar. A 1-D
        array is a distribution: its quantiles go to the record (`k_p10`, `k_p50`, `k_p90`)
        and the whole array to a TensorBoard histogram."""
        dists = {k: np.asarray(v, np.float64) for k, v in metrics.items() if np.ndim(v) == 1}
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items() if k not in dists}}
        for k, v in dists.items():
            q = np.quantile(v, QUANTILES) if v.size else np.full(len(QUANTILES), np.nan)
            record |= {
                f"{k}_p{round(100 * p)}": float(x) for p, x in zip(QUANTILES, q, strict=True)
            }
        if not self.enabled or _kind(record) in self.kept:
            return
        _append(self.path, [record])
        scalars = {
            k: v
            for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and np.isfinite(v)
        }
        dists = {k: v for k, v in dists.items() if v.size}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            for k, v in dists.items():
                self.tb.add_histogram(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log(scalars | {k: wandb.Histogram(v) for k, v in dists.items()}, step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        """Record sample completions (JSONL and TensorBoard text)."""
        records = [{"step": step, **r} for r in rows]
        if not self.enabled or not rows or _kind(records[0]) in self.kept:
            return
        _append(self.samples_path, records)
        text = "\n\n".join(
            f"**prompt** `{r['prompt']!r}`\n\n**completion** `{r['completion']!r}` "
            f"(reward {r['reward']:.2f}, answer {r['answer']})"
            for r in rows
        )
        if self.tb is not None:
            self.tb.add_text("samples", text, step)

    def sync(self) -> None:
        """Flush the JSONL files to disk (called at each checkpoint: logs up to it are safe)."""
        if not self.enabled:
            return
        for path in (self.path, self.samples_path):
            if os.path.exists(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer and finish the wandb run."""
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _tensorboard(run_dir: str, start_step: int, config: dict | None) -> Any:
    """A TensorBoard writer in run_dir/tb (purging the steps a resume redoes); the config as text."""
    from tensorboardX import SummaryWriter

    tb = SummaryWriter(
        os.path.join(run_dir, "tb"), purge_step=start_step + 1 if start_step else None
    )
    if config is not None and not start_step:
        import yaml

        tb.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
    return tb


def _wandb_run(run_dir: str, start_step: int, config: dict | None) -> Any:
    """A wandb run in run_dir/wandb with the run config; a resume continues the run whose id
    run_dir/wandb-id keeps. WANDB_MODE=offline (no network) and WANDB_PROJECT are honoured."""
    try:
        import wandb
    except ImportError:
        raise ValueError(WANDB_MISSING) from None
    id_path = os.path.join(run_dir, "wandb-id")
    run_id = None
    if start_step and os.path.exists(id_path):
        with open(id_path) as f:
            run_id = f.read().strip() or None
    if run_id is None:
        run_id = uuid.uuid4().hex[:8]
        with open(id_path, "w") as f:
            f.write(run_id + "\n")
    return wandb.init(
        dir=run_dir,
        project=os.environ.get("WANDB_PROJECT") or "redjax",
        name=os.path.basename(os.path.normpath(run_dir)),
        id=run_id,
        resume="allow",
        config=config,
    )


def _append(path: str, records: list[dict]) -> None:
    """Append records as JSON lines in a single write, so a kill cannot interleave them."""
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _parse(lines: list[str], path: str) -> list[tuple[str, dict]]:
    """(line, record) of JSONL lines; a line cut short by a kill is dropped with a warning."""
    out = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            out.append((ln if ln.endswith("\n") else ln + "\n", json.loads(ln)))
        except ValueError:
            log.warning("%s: dropped line %d, cut short by a kill: %.60r", path, i + 1, ln)
    return out


def repair(path: str, start_step: int) -> list[tuple[int, bool]]:
    """Keep the records up to the checkpoint resumed from (none when starting fresh at 0),
    without a torn last line; rewrites the file atomically. Returns the kept records' kinds."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = _parse(f.readlines(), path)
    keep = [(ln, r) for ln, r in records if 0 < start_step >= r["step"]]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(ln for ln, _ in keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return [_kind(r) for _, r in keep]


def read_metrics(run_dir: str) -> list[dict]:
    """All records of a run's metrics.jsonl (for scripts and notebooks); a line torn by a kill
    while the run is going is skipped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        return [r for _, r in _parse(f.readlines(), path)]
