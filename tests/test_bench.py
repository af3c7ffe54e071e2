"""bench/: redjax imports from a plain checkout; bench/kernel_profile.py reads HLO and traces into
exact class totals (handmade module and traces), and profiles a real train step and decode step
on CPU; bench/step.py picks attention implementations per backend and reports failed rows;
neither script needs grain or tensorboardX (not on the GPU image)."""

import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

import redjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
    """bench/<name>.py under the module name bench_<name> (bench/ itself stays off sys.path:
    bench/step.py there would shadow the redjax.step module name)."""
    if f"bench_{name}" in sys.modules:
        return sys.modules[f"bench_{name}"]
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", os.path.join(ROOT, "bench", f"{name}.py")
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


prof = load("kernel_profile")
bstep = load("step")


def test_version_without_installed_metadata(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        want = tomllib.load(f)["project"]["version"]

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    with monkeypatch.context() as m:
        m.setattr(importlib.metadata, "version", missing)
        importlib.reload(redjax)
        assert redjax.__version__ == want
    importlib.reload(redjax)


def test_scripts_need_neither_grain_nor_tensorboardx():
    """Import both scripts and every redjax module they use, and run their --help as scripts,
    in a Python where importing grain or tensorboardX fails."""
    code = f"""
import runpy, sys
sys.modules["grain"] = None
sys.modules["tensorboardX"] = None
import redjax.sampler, redjax.step, redjax.sharding, redjax.models
for name in ("step", "kernel_profile"):
    sys.argv = [name, "--help"]
    try:
        runpy.run_path({os.path.join(ROOT, "bench")!r} + f"/{{name}}.py", run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), e.code
print("ok", "grain" in sys.modules and sys.modules["grain"] is None)
"""
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok True")
    assert "--attention" in out.stdout and "--new-tokens" in out.stdout  # both helps printed


def test_gpu_script_fits_eight_minutes():
    """bench/gpu.sh's part timeouts (the step part once per shape of its loop) add up to at
    most 8 minutes, and to the figure its header states."""
    with open(os.path.join(ROOT, "bench", "gpu.sh")) as f:
        text = f.read()
    # the step part once per shape: for lens in "rows prompt resp total seconds"
    shapes = [int(secs) for secs in re.findall(r'"\d+ \d+ \d+ \d+ (\d+)"', text)]
    parts = re.findall(r"^\s*part (\S+) (\d+) ", text, re.M)
    total = sum(int(secs) for _, secs in parts) + sum(shapes)
    assert len(parts) == 7 and len(shapes) == 2, parts
    assert total <= 480 and f"add up to {total} s" in text, total


def test_no_bench_script_shadows_a_module():
    """`python bench/x.py` puts bench/ first on sys.path: a bench/profile.py there would be what
    `import profile` finds (cProfile does, under torch._dynamo, under transformers)."""
    stems = [f[:-3] for f in os.listdir(os.path.join(ROOT, "bench")) if f.endswith(".py")]
    assert "step" in stems and "kernel_profile" in stems
    for stem in stems:
        assert stem not in sys.stdlib_module_names, stem
        assert importlib.util.find_spec(stem) is None, stem


HLO = """HloModule jit_step, is_scheduled=true, entry_computation_layout={(f32[4,4]{1,0})->f32[]}

%fused_dot (param_0: f32[4,4], param_1: f32[4,4]) -> f32[4,4] {
  %param_0 = f32[4,4]{1,0} parameter(0)
  %param_1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,4]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_softmax (param_0.1: f32[4,4]) -> f32[4,4] {
  %param_0.1 = f32[4,4]{1,0} parameter(0)
  %exponential.1 = f32[4,4]{1,0} exponential(%param_0.1)
  ROOT %divide.1 = f32[4,4]{1,0} divide(%exponential.1, %param_0.1)
}

%fused_transpose (param_0.2: f32[4,4]) -> f32[4,4] {
  %param_0.2 = f32[4,4]{1,0} parameter(0)
  ROOT %transpose.1 = f32[4,4]{0,1} transpose(%param_0.2), dimensions={1,0}
}

%fused_outer (param_0.3: f32[4,4]) -> f32[4,4] {
  %param_0.3 = f32[4,4]{1,0} parameter(0)
  ROOT %inner_fusion = f32[4,4]{1,0} fusion(%param_0.3, %param_0.3), kind=kLoop, calls=%fused_dot
}

ENTRY %main.9 (p0: f32[4,4], /*index=1*/p1: f32[4,4]) -> f32[] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %up_fusion = f32[4,4]{1,0} fusion(%p0, %p0), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(step)/layers/mlp/up/dot_general"}
  %q_fusion = f32[4,4]{1,0} fusion(%p0, %p0), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(step)/layers/attn/q/dot_general"}
  %scores_fusion = f32[4,4]{1,0} fusion(%p0, %p0), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(step)/layers/attn/vmap(BTNH,BSNH->BNTS)/dot_general"}
  %softmax_fusion = f32[4,4]{1,0} fusion(%p0), kind=kLoop, calls=%fused_softmax, metadata={op_name="checkpoint/layers/attn/vmap()/div"}
  %loss_fusion = f32[4,4]{1,0} fusion(%p0), kind=kLoop, calls=%fused_softmax, metadata={op_name="jit(step)/div"}
  %transpose_fusion = f32[4,4]{0,1} fusion(%p0), kind=kLoop, calls=%fused_transpose
  %nested_fusion = f32[4,4]{1,0} fusion(%p0), kind=kLoop, calls=%fused_outer
  %copy.3 = f32[4,4]{0,1} copy(%p0)
  %all-reduce.1 = f32[4,4]{1,0} all-reduce(%p0), replica_groups={}, to_apply=%fused_softmax
  %custom-call.1 = (f32[4,4]{1,0}, s8[0]{0}) custom-call(%p0, %p0), custom_call_target="__cublas$gemm"
  %custom-call.2 = (f32[4,4]{1,0}, /*index=1*/s8[0]{0}) custom-call(%p0, %p0, %p0), custom_call_target="__cudnn$fmhaSoftmax"
  %while.1 = (s32[], f32[4,4]{1,0}) while(%tuple.1), condition=%cond, body=%body
  %rng.1 = u32[2]{0} rng-get-and-update-state(), delta=1
  ROOT %reduce.1 = f32[] reduce(%p0, %p0), dimensions={0,1}, to_apply=%fused_softmax
}
"""


def test_parse_hlo():
    ops = prof.parse_hlo(HLO)
    assert prof.module_name(HLO) == "jit_step"
    assert ops["up_fusion"] == prof.Op(
        "fusion", frozenset({"parameter", "dot"}), "", "jit(step)/layers/mlp/up/dot_general"
    )
    assert ops["nested_fusion"].inner == {"parameter", "fusion", "dot"}
    assert ops["custom_call_1"].opcode == "custom-call"  # a tuple type before the opcode
    assert ops["custom_call_2"].target == "__cudnn$fmhaSoftmax"
    assert ops["copy_3"].opcode == "copy" and ops["while_1"].opcode == "while"
    assert ops["rng_1"].opcode == "rng-get-and-update-state"
    assert "p0" not in ops or ops["p0"].opcode == "parameter"


def test_classify_hlo_ops():
    ops = prof.parse_hlo(HLO)
    want = {
        "up_fusion": "matmul",
        "q_fusion": "matmul",  # a projection of the attention module: a matmul
        "scores_fusion": "attention",
        "softmax_fusion": "attention",
        "loss_fusion": "other fusions",
        "transpose_fusion": "copies",
        "nested_fusion": "matmul",
        "copy_3": "copies",
        "all_reduce_1": "collectives",
        "custom_call_1": "matmul",
        "custom_call_2": "attention",
        "rng_1": "other",
        "reduce_1": "other",
    }
    assert {k: prof.classify(k, ops[k]) for k in want} == want
    assert prof.is_control("while.1", ops["while_1"]) and not prof.is_control("x", ops["up_fusion"])


@pytest.mark.parametrize(
    "name, cls",
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("nvjet_tst_128x64_64x4_1x2_h_bz_coopA_NTN", "matmul"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "attention"),
        ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "collectives"),
        ("MemcpyD2D", "copies"),
        ("Memset", "copies"),
        ("loop_transpose_fusion_2", "copies"),
        ("loop_multiply_fusion_3", "other fusions"),
        ("input_reduce_fusion", "other fusions"),
        ("rng_bit_generator", "other"),
    ],
)
def test_classify_kernel_names(name, cls):
    assert prof.classify(name, None) == cls


def _meta(pid, name, tid=None):
    if tid is None:
        return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def _x(pid, tid, ts, dur, name, op=None, module="jit_step", **args):
    if op is not None:
        args = {**args, "hlo_op": op, "hlo_module": module}
    return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name, "args": args}


def test_cpu_trace_totals():
    """Host trace: XLA ops carry hlo_op; a while op encloses its body's ops on its thread (counted
    once, in the body); other devices' ops, Python events and `end:` markers are left out."""
    trace = {
        "traceEvents": [
            _meta(7, "/host:CPU"),
            _meta(7, "python", 1),
            _x(7, 1, 0, 500, "PjitFunction(step)"),
            _x(7, 2, 10, 100, "while.1", "while.1"),
            _x(7, 2, 20, 30, "scores_fusion", "scores_fusion"),
            _x(7, 2, 60, 40, "up_fusion", "up_fusion"),
            _x(7, 2, 100, 1, "end: up_fusion"),
            _x(7, 3, 15, 8, "up_fusion", "up_fusion", device_ordinal="0"),
            _x(7, 3, 30, 9, "up_fusion", "up_fusion", device_ordinal="1"),
            _x(7, 3, 40, 5, "copy.3", "copy.3"),
            _x(7, 3, 50, 6, "all-reduce.1", "all-reduce.1"),
            _x(7, 3, 60, 2, "rng.1", "rng.1"),
            _x(7, 3, 70, 4, "softmax_fusion", "softmax_fusion"),
            _x(7, 3, 80, 3, "fusion.9", "fusion.9", module="jit_other"),
        ]
    }
    events = prof.device_events(trace)
    assert prof.device_lines(trace) == {}
    assert sorted(e.name for e in events) == [
        "all-reduce.1", "copy.3", "fusion.9", "rng.1", "scores_fusion", "softmax_fusion",
        "up_fusion", "up_fusion",
    ]  # fmt: skip
    rows = prof.summarise(prof.in_module(events, "step"), {"jit_step": prof.parse_hlo(HLO)})
    assert prof.by_class(rows) == {
        "matmul": (48.0, 2),
        "attention": (34.0, 2),
        "other fusions": (0.0, 0),
        "copies": (5.0, 1),
        "collectives": (6.0, 1),
        "other": (2.0, 1),
    }
    up = next(r for r in rows if r.name == "up_fusion")
    assert (up.us, up.calls, up.cls) == (48.0, 2, "matmul")
    assert rows[0] == up  # largest first


def test_gpu_trace_totals_and_tables():
    """Device trace: only device 0's stream lines count (not a derived XLA Ops line, not the
    host's launch events, not GPU 1); kernels named by the HLO op or, lacking one, by name."""
    trace = {
        "traceEvents": [
            _meta(1, "/device:GPU:0"),
            _meta(1, "Stream #7(Compute)", 7),
            _meta(1, "Stream #8(MemcpyD2H)", 8),
            _meta(1, "XLA Ops", 9),
            _meta(2, "/device:GPU:1"),
            _meta(2, "Stream #7(Compute)", 7),
            _meta(3, "/host:CPU"),
            _meta(3, "tf_XLAGpu", 4),
            _x(1, 7, 0, 100, "sm90_xmma_gemm_bf16bf16_bf16f32", "custom-call.1"),
            _x(1, 7, 100, 100, "sm90_xmma_gemm_bf16bf16_bf16f32", "custom-call.1"),
            _x(1, 7, 200, 50, "softmax_fusion", "softmax_fusion"),
            _x(1, 7, 250, 20, "loop_add_fusion_4"),
            _x(1, 7, 270, 60, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop"),
            _x(1, 7, 330, 30, "ncclDevKernel_AllGather_RING_LL"),
            _x(1, 7, 360, 10, "transpose_fusion", "transpose_fusion"),
            _x(1, 8, 370, 5, "MemcpyD2H"),
            _x(1, 9, 0, 375, "fusion.1", "fusion.1"),
            _x(2, 7, 0, 999, "sm90_xmma_gemm_bf16bf16_bf16f32", "custom-call.1"),
            _x(3, 4, 0, 7, "custom-call.1", "custom-call.1"),
        ]
    }
    assert sorted(prof.device_lines(trace).values()) == [
        "Stream #7(Compute)",
        "Stream #8(MemcpyD2H)",
    ]
    rows = prof.summarise(prof.device_events(trace), {"jit_step": prof.parse_hlo(HLO)})
    assert prof.by_class(rows) == {
        "matmul": (200.0, 2),
        "attention": (110.0, 2),
        "other fusions": (20.0, 1),
        "copies": (15.0, 2),
        "collectives": (30.0, 1),
        "other": (0.0, 0),
    }
    classes = prof.class_table(rows, steps=2)
    assert "| matmul | 0.100 | 53.3 | 1 |" in classes  # 200 us over 2 steps, 200 / 375
    assert "| **total** | 0.188 | 100.0 | 4 |" in classes
    top = prof.top_table(rows, steps=2, top=2).splitlines()
    assert len(top) == 4
    assert (
        top[2] == "| sm90_xmma_gemm_bf16bf16_bf16f32 | custom-call.1 | matmul | 0.100 | 1 | 100.0 |"
    )


def _table_sum(table: str) -> tuple[float, float]:
    """(sum of the class rows' ms, the total row's ms) of a printed class table."""
    cells = [ln.split("|")[1:3] for ln in table.splitlines()[2:]]
    ms = {name.strip(): float(v) for name, v in cells}
    total = ms.pop("**total**")
    return sum(ms.values()), total


CFG = dict(
    vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
    num_kv_heads=1, head_dim=8,
)  # fmt: skip
ARGS = ["--rows", "8", "--prompt-len", "4", "--resp-len", "4", "--batch", "2", "--new-tokens", "3"]


def _check_sums(p) -> None:
    """Positive device time; the printed classes sum to the printed total, and to the rows'."""
    got, total = _table_sum(prof.class_table(p.rows, p.steps))
    assert total > 0 and got == pytest.approx(total, abs=0.004)
    classes = sum(us for us, _ in prof.by_class(p.rows).values())
    assert classes == pytest.approx(sum(r.us for r in p.rows))


def test_profile_train_step_on_cpu(tmp_path):
    """The script's profile of a 1-layer model's train step: classes from the compiled HLO find
    the matmuls and the attention; both profiled steps count whole (each matmul kernel ran as
    many times in one as in the other)."""
    from redjax.models import ModelConfig

    p = prof.profile_train(
        ModelConfig(**CFG), prof.parse_args([*ARGS, "--steps", "2"]), str(tmp_path)
    )
    _check_sums(p)
    classes = prof.by_class(p.rows)
    assert classes["matmul"][0] > 0 and classes["attention"][0] > 0
    assert p.steps == 2 and all(r.calls % 2 == 0 for r in p.rows if r.cls == "matmul")


def test_profile_decode_step_on_cpu(tmp_path):
    """The script's profile of a sampler call: the decode module's events, per decode step."""
    from redjax.models import ModelConfig

    dump = str(tmp_path / "none")  # jax started before the script could ask for a dump
    p = prof.profile_decode(ModelConfig(**CFG), prof.parse_args(ARGS), str(tmp_path), dump)
    _check_sums(p)
    assert p.steps == 2 and "no HLO dumped" in p.notes
    assert "no event names a decode module" not in p.notes


def test_attention_choices():
    cpu = SimpleNamespace(platform="cpu", device_kind="cpu")
    h100 = SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    tpu = SimpleNamespace(platform="tpu", device_kind="TPU v5p")
    pick = bstep.pick_attention
    assert pick("all", "bfloat16", cpu) == ["xla", "chunked"]
    assert pick("all", "bfloat16", h100) == ["xla", "cudnn", "chunked"]
    assert pick("all", "float32", h100) == ["xla", "chunked"]
    assert pick("all", "float32", tpu) == ["xla", "splash", "chunked"]
    assert pick("cudnn,xla", "float32", cpu) == ["cudnn", "xla"]  # asked for: tried, may fail
    with pytest.raises(SystemExit, match="flash"):
        pick("xla,flash", "float32", cpu)
    assert bstep.pick_variants("red,grpo") == ["grpo", "red"]  # the reference first
    with pytest.raises(SystemExit, match="--variants"):
        bstep.pick_variants("fast")


def test_failed_rows(tmp_path):
    """A row whose child process dies, or runs past --timeout, prints why; the run goes on."""
    args = bstep.parse_args(["--variants", "nonesuch", "--rows", "8"])
    dead = bstep.measure_isolated(args, "xla", "nonesuch")
    assert dead == {"error": "child process exited with code 1"}
    args = bstep.parse_args(["--rows", "8", "--timeout", "0.01"])
    assert bstep.measure_isolated(args, "xla", "red") == {"error": "timed out after 0.01 s"}
    cfg = bstep.ModelConfig(**bstep.SIZES["tiny"])
    oom = {"error": "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory | 12 GiB"}
    line = bstep.row(cfg, args, "cudnn", "red", oom, None)
    assert line.startswith("| cudnn | RED step (Extend rows + probe) | failed: XlaRuntimeError")
    assert line.count("|") == 8  # the table's 7 columns; the message's "|" escaped
    ok = bstep.row(cfg, args, "xla", "red", {"step_s": 0.5, "peak": 3 * 2**30}, 0.25)
    assert ok.endswith("| 0.500 | 1,024 | n/a | 3.00 | 2.00x |")  # 8 rows x 64 tokens / 0.5 s


def test_device_lines_without_streams():
    """A TPU's ops are on its XLA Ops line (not the XLA Modules one); lines of another name on
    a device count unless a profiler derives them from the ops (Steps, XLA Modules, ...)."""
    tpu = {
        "traceEvents": [
            _meta(5, "/device:TPU:1"),
            _meta(5, "XLA Ops", 2),
            _meta(4, "/device:TPU:0"),
            _meta(4, "XLA Modules", 1),
            _meta(4, "XLA Ops", 2),
        ]
    }
    assert prof.device_lines(tpu) == {(4, 2): "XLA Ops"}
    other = {
        "traceEvents": [
            _meta(4, "/device:GPU:0"),
            _meta(4, "Steps", 1),
            _meta(4, "Compute", 3),
        ]
    }
    assert prof.device_lines(other) == {(4, 3): "Compute"}
