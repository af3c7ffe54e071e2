"""Run logs: metrics.jsonl (one JSON object per logged step), TensorBoard events, samples.

Only process 0 writes. On resume, records after the restored checkpoint's step are dropped from metrics.jsonl
and TensorBoard purges them, so a resumed run's logs read like an uninterrupted one's.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic | np.ndarray):
        return v.item() if np.ndim(v) == 0 else v.tolist()
    return v


class Logger:
    def __init__(self, run_dir: str, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.samples_path = os.path.join(run_dir, "samples.jsonl")
        self.tb = None
        if not enabled:
            return
        for path in (self.path, self.samples_path):
            _truncate(path, start_step)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(
            os.path.join(run_dir, "tb"), purge_step=start_step + 1 if start_step else None
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one metrics record and write each number as a TensorBoard scalar."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float) and np.isfinite(v):
                self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def samples(self, step: int, rows: list[dict]) -> None:
        """Record sample completions (JSONL and TensorBoard text)."""
        if not self.enabled or not rows:
            return
        with open(self.samples_path, "a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")
        text = "\n\n".join(
            f"**prompt** `{r['prompt']!r}`\n\n**completion** `{r['completion']!r}` "
            f"(reward {r['reward']:.2f}, answer {r['answer']})"
            for r in rows
        )
        self.tb.add_text("samples", text, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _truncate(path: str, start_step: int) -> None:
    """Keep the records up to the checkpoint resumed from (none when starting fresh at 0)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and 0 < start_step >= json.loads(ln)["step"]]
    with open(path, "w") as f:
        f.writelines(lines)


def read_metrics(run_dir: str) -> list[dict]:
    """All records of a run's metrics.jsonl (for scripts and notebooks)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f if ln.strip()]
