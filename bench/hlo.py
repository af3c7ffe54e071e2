"""Bytes moved by the collectives of a compiled XLA program, read from its HLO text.

Used by bench/comms.py and the communication test of tests/test_step.py; not part of the
library (the trainer never needs it).
"""

from __future__ import annotations

import math
import re

_COLLECTIVE = re.compile(
    r"= (\(.*?\)|\S+) (?:all-reduce|reduce-scatter|all-gather|all-to-all|collective-permute)"
    r"(?:-start)?\("
)
_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}


def collective_bytes(hlo: str) -> int:
    """Bytes of collective results per device in one run of a compiled program's text
    (`jitted.lower(...).compile().as_text()`): a loop body's count once per iteration."""
    trips = {}
    for line in hlo.splitlines():
        if " while(" in line:
            body = re.search(r"body=%?([\w.\-]+)", line).group(1)
            n = re.search(r'known_trip_count":\{"n":"(\d+)"', line)
            trips[body] = int(n.group(1)) if n else 1
    total = 0
    for comp in re.split(r"\n(?=\S.*\{\n)", hlo):
        name = re.match(r"(?:ENTRY )?%?([\w.\-]+)", comp)
        if name is None:
            continue
        size = 0
        for shapes in _COLLECTIVE.findall(comp):
            for dtype, dims in re.findall(r"\b(\w+)\[([\d,]*)\]", shapes):
                size += _BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
        total += size * trips.get(name.group(1), 1)
    return total
