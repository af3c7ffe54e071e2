"""Kernel profile of one train step and one sampler decode step: where a step's time goes.

Each program runs once to compile and warm up, then under `jax.profiler.trace`; the Perfetto
trace jax writes (a Chrome-trace JSON) is read back with the standard library and, per
program, two markdown tables are printed: device time per step by class (matmul, attention,
other fusions, copies, collectives, other) and the top kernels by time with calls per step.

    python bench/kernel_profile.py                  # tiny model on CPU, under a minute
    python bench/kernel_profile.py --size qwen2.5-0.5b --rows 64 --prompt-len 256 --resp-len 512 \
        --batch 64 --new-tokens 512 --dtype bfloat16 --remat full   # bench/gpu.sh's shapes
    python bench/kernel_profile.py --program decode ...                    # one of the two
    python bench/kernel_profile.py --out prof ...   # keep the traces (ui.perfetto.dev) and HLO dump

The train step is redjax.step's jitted RED step on bench/step.py's batch (--rows rows of
--prompt-len + --resp-len tokens, an eighth teacher rows, a quarter probed), --steps steps
profiled. The decode step is the sampler's: one greedy `redjax.sampler.sample` call (--batch
prompts of --prompt-len tokens, --new-tokens), its decode programs' events (XLA modules whose
name contains "decode") over the number of decode steps (new tokens - 1: the prefill makes the
first).

What an event is depends on the backend. GPU: the kernels, copies and memsets CUPTI records on
the device's streams. TPU: the device's "XLA Ops" line. CPU: the XLA ops (thunks) the host
runs; control flow (while, conditional, call) is left out, as its body's ops count themselves,
and ops that run at once on different threads each count their own time.

A class comes from the optimized HLO of the event's op when the program's HLO is at hand (the
train step's from its compiled executable, the decode step's from an XLA dump this script asks
for), else from the kernel name. attention: a fused attention kernel (cuDNN, Pallas), or the
ops XLA builds attention from (scores, mask, softmax, weighted values, rope): those under the
model's `attn` scope other than its q/k/v/o projections. matmul: every other dot / gemm.
copies: memcpy, memset, and ops that only move data (copy, transpose, slice, concatenate, pad,
update-slice). collectives: all-reduce, all-gather, reduce-scatter, all-to-all, permutes.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

CLASSES = ("matmul", "attention", "other fusions", "copies", "collectives", "other")
COLLECTIVE_OPS = {
    "all-reduce", "all-reduce-start", "all-reduce-done", "all-gather", "all-gather-start",
    "all-gather-done", "reduce-scatter", "all-to-all", "collective-permute",
    "collective-permute-start", "collective-permute-done", "collective-broadcast",
    "ragged-all-to-all", "send", "send-done", "recv", "recv-done",
}  # fmt: skip
MOVE_OPS = {
    "parameter", "constant", "copy", "copy-start", "copy-done", "transpose", "bitcast",
    "reshape", "broadcast", "slice", "dynamic-slice", "dynamic-update-slice", "concatenate",
    "pad", "tuple", "get-tuple-element", "bitcast-convert",
}  # fmt: skip
CONTROL_OPS = {"while", "conditional", "call"}
DERIVED_LINES = {  # lines a profiler derives from the ops: spans over them, not more ops
    "XLA Modules", "XLA Ops", "Steps", "Framework Ops", "Framework Name Scope", "Source code",
    "XLA TraceMe", "Launch Stats", "Host Offload Ops", "Sparse Core Ops",
}  # fmt: skip
COLLECTIVE_NAME = re.compile(
    r"nccl|all[-_]?reduce|all[-_]?gather|reduce[-_]?scatter|all[-_]?to[-_]?all|collective"
)
ATTENTION_NAME = re.compile(r"fmha|flash|sdpa|splash|attention|paged_attn|mha_")
MATMUL_NAME = re.compile(r"gemm|matmul|xmma|cutlass|nvjet|cublas|triton_dot|(^|_)dot(_|$)")
COPY_NAME = re.compile(r"memcpy|memset|(^|_)copy|transpose")
FUSION_NAME = re.compile(r"fusion|triton|^loop_|^input_|^wrapped_")
ATTENTION_SCOPE = re.compile(r"dot_product_attention|(^|/)(attn|attention)(/|$)")
PROJECTION_SCOPE = re.compile(r"(^|/)(attn|attention)/(q|k|v|o|qkv|kv)(/|$)")


@dataclasses.dataclass(frozen=True)
class Op:
    """An instruction of an optimized HLO module, as much of it as classes need."""

    opcode: str
    inner: frozenset[str] = frozenset()  # opcodes a fusion contains (nested ones too)
    target: str = ""  # custom-call target
    scope: str = ""  # metadata op_name: the jax / flax scope it was traced under


@dataclasses.dataclass(frozen=True)
class Event:
    """One device op of a trace: its name (kernel or HLO op), HLO op, module, microseconds."""

    name: str
    op: str
    module: str
    us: float


@dataclasses.dataclass(frozen=True)
class Row:
    """The events of one kernel (name, HLO op): their class, total microseconds and count."""

    name: str
    op: str
    cls: str
    us: float
    calls: int


# ----------------------------------------------------------------------------- HLO
def key(name: str) -> str:
    """An op name as HLO text, trace args and GPU kernel names all spell it (`.`, `-` -> `_`)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _opcode(rest: str) -> str:
    """The opcode of an instruction line's text after `name = `: skip the (tuple) type."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                rest = rest[i + 1 :]
                break
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    m = re.match(r"\s*([\w\-]+)\(", rest)
    return m.group(1) if m else ""


def module_name(text: str) -> str:
    """The name of an HLO module from its text (`HloModule jit_train_step, ...`)."""
    m = re.match(r"\s*HloModule\s+([\w.\-]+)", text)
    return m.group(1) if m else ""


def parse_hlo(text: str) -> dict[str, Op]:
    """Every instruction of an optimized HLO module's text, by key(name), with its opcode, the
    opcodes inside it if a fusion, its custom-call target and its op_name scope."""
    comps: dict[str, list[str]] = collections.defaultdict(list)  # computation -> instructions
    raw: dict[str, tuple[str, str, str, str]] = {}  # name -> (opcode, calls, target, scope)
    comp = ""
    for line in text.splitlines():
        head = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$", line)
        if head and not line.startswith(" "):
            comp = head.group(1)
            continue
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$", line)
        if not m or not comp:
            continue
        name, rest = m.groups()
        calls = re.search(r"\bcalls=%?([\w.\-]+)", rest)
        target = re.search(r'custom_call_target="([^"]*)"', rest)
        scope = re.search(r'op_name="([^"]*)"', rest)
        raw[name] = (
            _opcode(rest),
            calls.group(1) if calls else "",
            target.group(1) if target else "",
            scope.group(1) if scope else "",
        )
        comps[comp].append(name)

    def inner(comp: str, seen: frozenset[str]) -> frozenset[str]:
        found: set[str] = set()
        for n in comps.get(comp, ()):
            opcode, calls, _, _ = raw[n]
            found.add(opcode)
            if calls and calls not in seen:
                found |= inner(calls, seen | {calls})
        return frozenset(found)

    return {
        key(n): Op(o, inner(c, frozenset({c})) if c else frozenset(), t, s)
        for n, (o, c, t, s) in raw.items()
    }


# ----------------------------------------------------------------------------- classes
def classify(name: str, op: Op | None) -> str:
    """The class of a kernel from its HLO op when known, else from its (kernel) name."""
    text = f"{name} {op.target if op else ''}".lower()
    ops = {op.opcode} | op.inner if op else set()
    body = op.inner if op and op.opcode == "fusion" else ops  # what the kernel computes
    if ops & COLLECTIVE_OPS or COLLECTIVE_NAME.search(text):
        return "collectives"
    if (body and body <= MOVE_OPS) or (not op and COPY_NAME.search(text)):
        return "copies"
    scope = op.scope if op else ""
    in_attn = ATTENTION_SCOPE.search(scope) and not PROJECTION_SCOPE.search(scope)
    if in_attn or ATTENTION_NAME.search(text):
        return "attention"
    if ops & {"dot", "convolution"} or MATMUL_NAME.search(text):
        return "matmul"
    if (op and op.opcode == "fusion") or (not op and FUSION_NAME.search(text)):
        return "other fusions"
    return "other"


def is_control(name: str, op: Op | None) -> bool:
    """While loops, conditionals and calls: their time is their body ops', counted apart."""
    if op is not None:
        return op.opcode in CONTROL_OPS
    return re.match(r"(while|conditional|call)([._]\d+)?$", name) is not None


# ----------------------------------------------------------------------------- trace
def load_trace(log_dir: str) -> dict:
    """The newest perfetto_trace.json.gz under a jax.profiler.trace log_dir, parsed."""
    paths = glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {log_dir}")
    with gzip.open(max(paths, key=os.path.getmtime), "rt") as f:
        return json.load(f)


def _names(trace: dict, kind: str) -> dict:
    """pid -> process name (kind "process_name") or (pid, tid) -> thread name."""
    meta = [e for e in trace["traceEvents"] if e.get("ph") == "M" and e.get("name") == kind]
    if kind == "process_name":
        return {e["pid"]: e["args"]["name"] for e in meta}
    return {(e["pid"], e.get("tid")): e["args"]["name"] for e in meta}


def _leaves(events: list[dict]) -> list[dict]:
    """The events no other event of the same thread starts inside (nesting: a while op)."""
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["pid"], e.get("tid")].append(e)
    out = []
    for es in by_thread.values():
        es.sort(key=lambda e: (e["ts"], -e["dur"]))
        for a, b in zip(es, [*es[1:], None], strict=True):
            if b is None or b["ts"] >= a["ts"] + a["dur"]:
                out.append(a)
    return out


def _device_number(name: str) -> int:
    m = re.match(r"/device:\w+:(\d+)", name)
    return int(m.group(1)) if m else 0


def device_lines(trace: dict) -> dict[tuple, str]:
    """(pid, tid) -> name of device 0's op lines in a trace: a GPU's streams, else a TPU's XLA
    Ops line, else its lines that are not derived; empty when the trace has no device (CPU)."""
    devices = {n: p for p, n in _names(trace, "process_name").items() if n.startswith("/device:")}
    first = {devices[min(devices, key=_device_number)]} if devices else set()
    threads = {k: n for k, n in _names(trace, "thread_name").items() if k[0] in first}
    streams = {k: n for k, n in threads.items() if n.startswith("Stream")}
    ops = {k: n for k, n in threads.items() if n == "XLA Ops"}
    return streams or ops or {k: n for k, n in threads.items() if n not in DERIVED_LINES}


def device_events(trace: dict) -> list[Event]:
    """Device 0's op events in a trace: those on its device lines, or (no device: CPU) the XLA
    ops the host threads ran for it, innermost only."""
    spans = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    lines = device_lines(trace)
    if lines:
        picked = [e for e in spans if (e["pid"], e.get("tid")) in lines]
    else:
        ops = [e for e in spans if "hlo_op" in e.get("args", {})]
        picked = [e for e in ops if str(e["args"].get("device_ordinal", "0")) == "0"]
    return [
        Event(
            e["name"],
            e.get("args", {}).get("hlo_op", ""),
            e.get("args", {}).get("hlo_module", ""),
            float(e["dur"]),
        )
        for e in _leaves(picked)
    ]


def in_module(events: list[Event], pattern: str) -> list[Event]:
    """The events of XLA modules whose name contains `pattern`."""
    return [e for e in events if pattern in e.module]


def summarise(events: Iterable[Event], hlo: dict[str, dict[str, Op]]) -> list[Row]:
    """Events grouped by (name, HLO op) and classed, control flow left out; by time, largest
    first. hlo: module name -> parse_hlo of it (an op is looked up in its own module first)."""
    merged = {k: op for ops in hlo.values() for k, op in ops.items()}
    acc: dict[tuple[str, str], list] = {}
    for e in events:
        ops = hlo.get(e.module, merged)
        op = ops.get(key(e.op)) or ops.get(key(e.name))
        if is_control(e.name, op):
            continue
        cur = acc.setdefault((e.name, e.op), [classify(e.name, op), 0.0, 0])
        cur[1] += e.us
        cur[2] += 1
    rows = [Row(n, o, c, us, k) for (n, o), (c, us, k) in acc.items()]
    return sorted(rows, key=lambda r: -r.us)


def by_class(rows: Iterable[Row]) -> dict[str, tuple[float, int]]:
    """Class -> (microseconds, events), every class present (zeros too), in CLASSES order."""
    out = {c: [0.0, 0] for c in CLASSES}
    for r in rows:
        out[r.cls][0] += r.us
        out[r.cls][1] += r.calls
    return {c: (us, n) for c, (us, n) in out.items()}


# ----------------------------------------------------------------------------- tables
def _count(x: float) -> str:
    return f"{x:,.0f}" if abs(x - round(x)) < 0.05 else f"{x:,.1f}"


def _cell(text: str, width: int = 72) -> str:
    text = text.replace("|", "/")
    return text if len(text) <= width else text[: width - 3] + "..."


def class_table(rows: list[Row], steps: int) -> str:
    """Markdown: per class, ms per step, share of the total and kernels per step."""
    classes = by_class(rows)
    total = sum(us for us, _ in classes.values())
    lines = ["| class | ms per step | % | kernels per step |", "|---|---:|---:|---:|"]
    for c, (us, n) in classes.items():
        share = 100 * us / total if total else 0.0
        lines.append(f"| {c} | {us / 1e3 / steps:.3f} | {share:.1f} | {_count(n / steps)} |")
    count = sum(n for _, n in classes.values())
    lines.append(f"| **total** | {total / 1e3 / steps:.3f} | 100.0 | {_count(count / steps)} |")
    return "\n".join(lines)


def top_table(rows: list[Row], steps: int, top: int = 25) -> str:
    """Markdown: the `top` kernels by time, with class, ms per step, calls per step, mean us."""
    lines = [
        "| kernel | HLO op | class | ms per step | calls per step | mean us |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows[:top]:
        op = "" if r.op in ("", r.name) else _cell(r.op, 40)
        lines.append(
            f"| {_cell(r.name)} | {op} | {r.cls} | {r.us / 1e3 / steps:.3f} "
            f"| {_count(r.calls / steps)} | {r.us / r.calls:,.1f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- programs
def profile(run: Callable[[], None], steps: int, log_dir: str) -> tuple[dict, float]:
    """(the trace of `steps` calls of run, wall seconds per call) under jax.profiler.trace."""
    import jax

    opts = jax.profiler.ProfileOptions()
    opts.python_tracer_level = 0  # XLA ops only: no Python function events
    t0 = time.perf_counter()
    with jax.profiler.trace(log_dir, create_perfetto_trace=True, profiler_options=opts):
        for _ in range(steps):
            run()
    wall = (time.perf_counter() - t0) / steps
    return load_trace(log_dir), wall


def _bench_step():
    """bench/step.py as a module (by path and under its own name: it would shadow redjax.step)."""
    if "bench_step" in sys.modules:
        return sys.modules["bench_step"]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step.py")
    spec = importlib.util.spec_from_file_location("bench_step", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def train_program(cfg, args) -> tuple[Callable[[], None], dict[str, dict[str, Op]]]:
    """One RED train step at the args' shape, compiled, and its HLO (module -> ops)."""
    import jax
    import jax.numpy as jnp

    bs = _bench_step()
    fn, state, batch = bs.setup(cfg, args, "red")
    lr = jax.device_put(jnp.float32(1.0))
    compiled = fn.lower(state, batch, lr).compile()
    text = compiled.as_text()
    box = [state]

    def run():
        box[0], metrics = compiled(box[0], batch, lr)
        jax.block_until_ready(metrics)

    return run, {module_name(text): parse_hlo(text)}


def decode_program(cfg, args) -> Callable[[], None]:
    """One greedy sampler call: --batch prompts of --prompt-len tokens, --new-tokens."""
    import jax
    import numpy as np

    from redjax.models import init_params
    from redjax.sampler import SamplingParams, decode_params, sample

    params = jax.jit(init_params, static_argnums=0)(cfg)  # compiled: eager init is slower
    params = decode_params(params, cfg)  # once, not in each profiled call
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
    mask = np.ones(ids.shape, bool)
    sp = SamplingParams(temperature=0, top_k=0, top_p=1.0, max_new_tokens=args.new_tokens)
    return lambda: sample(params, cfg, ids, mask, num_samples=1, sp=sp, seed=0)


def dumped_hlo(dump_dir: str, pattern: str) -> dict[str, dict[str, Op]]:
    """Module name -> ops of the optimized HLO modules XLA dumped whose name has `pattern`."""
    out = {}
    for path in glob.glob(os.path.join(dump_dir, f"*{pattern}*after_optimizations.txt")):
        with open(path) as f:
            text = f.read()
        out[module_name(text)] = parse_hlo(text)
    return out


@dataclasses.dataclass
class Profile:
    """One program's profile: what it was, its kernel rows, the steps they cover, notes."""

    title: str
    rows: list[Row]
    steps: int
    notes: str


def report(p: Profile, top: int) -> None:
    """Print a program's header line, its class table and its top kernels."""
    total = sum(r.us for r in p.rows) / 1e3 / p.steps
    count = _count(sum(r.calls for r in p.rows) / p.steps)
    print(f"\n### {p.title}\n\ndevice time {total:.3f} ms per step in {count} kernels; {p.notes}\n")
    print(class_table(p.rows, p.steps) + "\n")
    print(top_table(p.rows, p.steps, top), flush=True)


def source(trace: dict) -> str:
    """Where a trace's events come from, in words."""
    lines = device_lines(trace)
    if not lines:
        return "events: the XLA ops of the host's threads (no device in the trace)"
    return f"events: device lines {', '.join(sorted(set(lines.values())))}"


def profile_train(cfg, args, work: str) -> Profile:
    """Profile --steps RED train steps (after a compile and a warm-up step)."""
    run, hlo = train_program(cfg, args)
    run()
    trace, wall = profile(run, args.steps, os.path.join(work, "train"))
    rows = summarise(device_events(trace), hlo)
    shape = f"{args.rows} x ({args.prompt_len} + {args.resp_len}), remat {args.remat}"
    notes = f"wall time {wall * 1e3:.3f} ms per step; {source(trace)}"
    return Profile(f"train step: {shape}, {args.steps} steps profiled", rows, args.steps, notes)


def profile_decode(cfg, args, work: str, dump: str) -> Profile:
    """Profile one sampler call (after a compiling one); its decode events per decode step."""
    run = decode_program(cfg, args)
    run()
    trace, wall = profile(run, 1, os.path.join(work, "decode"))
    steps = args.new_tokens - 1
    events = device_events(trace)
    mine = in_module(events, "decode")
    hlo = dumped_hlo(dump, "decode")
    notes = [f"sample() call {wall * 1e3:.1f} ms wall (prefill included)", source(trace)]
    unnamed = sum(e.us for e in events if not e.module) / 1e3 / steps
    if not mine:
        notes.append("no event names a decode module: the whole call counted")
    elif unnamed:
        notes.append(f"{unnamed:.3f} ms per step of events that name no XLA module left out")
    if not hlo:
        notes.append("no HLO dumped: classes from kernel names")
    shape = f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens"
    return Profile(
        f"decode step: {shape}, per step of {steps}",
        summarise(mine or events, hlo),
        steps,
        "; ".join(notes),
    )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", default="both", choices=["both", "train", "decode"])
    ap.add_argument("--size", default="tiny", help="a size of bench/step.py (tiny, qwen2.5-0.5b)")
    ap.add_argument("--rows", type=int, default=8, help="train step rows")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--resp-len", type=int, default=32, help="train step response tokens")
    ap.add_argument("--batch", type=int, default=8, help="decode prompts")
    ap.add_argument("--new-tokens", type=int, default=16, help="decode: tokens per prompt")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    ap.add_argument("--attention", default="auto", help="ModelConfig.attention")
    ap.add_argument("--decode-attention", default="xla", choices=["xla", "pallas"],
                    help="ModelConfig.decode_attention")  # fmt: skip
    ap.add_argument("--steps", type=int, default=2, help="train steps profiled")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="keep the traces (Perfetto UI) and HLO here")
    args = ap.parse_args(argv)
    args.offline_frac, args.micro_batches = 0.125, 1  # what bench/step.py's setup reads
    if args.new_tokens < 2:
        ap.error("--new-tokens must be >= 2: the first token comes from the prefill")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.out or tempfile.mkdtemp(prefix="redjax-profile-")
    dump = os.path.join(work, "hlo")
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_dump_to" not in flags:  # the decode program's HLO (read when jax starts)
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=decode"
        )
    import jax

    from redjax.models import ModelConfig

    bs = _bench_step()
    if args.size not in bs.SIZES:
        raise SystemExit(f"--size: unknown {args.size!r}; one of {sorted(bs.SIZES)}")
    cfg = ModelConfig(**bs.SIZES[args.size], dtype=args.dtype, remat=args.remat)
    cfg = cfg.replace(attention=args.attention, decode_attention=args.decode_attention)
    dev = jax.devices()[0]
    print(f"# kernel profile: {args.size} ({cfg.num_params / 1e6:.1f}M params), {args.dtype}, "
          f"attention {args.attention} (decode {args.decode_attention}), {jax.device_count()} x "
          f"{dev.device_kind}, "
          f"jax {jax.__version__}" + (f"; traces under {work}" if args.out else ""))  # fmt: skip
    try:
        if args.program in ("both", "train"):
            report(profile_train(cfg, args, work), args.top)
        if args.program in ("both", "decode"):
            report(profile_decode(cfg, args, work, dump), args.top)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
