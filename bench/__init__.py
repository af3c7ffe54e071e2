"""Benchmarks and bench-only helpers (hlo: collective bytes; step: synthetic train-step rows)."""
