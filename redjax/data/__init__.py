"""Data: record readers, the built-in arithmetic task, and the grain batch pipeline.

The pipeline names load lazily, so reading records does not import grain (and JAX).
"""

from redjax.data.builtin import make_task, write_task
from redjax.data.sources import load_records

_PIPELINE = ("Loader", "encode_prompts", "make_loader")

__all__ = ["load_records", "make_task", "write_task", *_PIPELINE]


def __getattr__(name: str):
    """Imports redjax.data.pipeline on first use of one of its names."""
    if name in _PIPELINE:
        from redjax.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'redjax.data' has no attribute {name!r}")
