"""The `redjax` command line: train, generate, eval, export, import, plan, info.

Each sub-command parses its arguments here and calls one function of the module that does the
work. A user mistake (bad key, missing file) prints one line `redjax: error: ...` and exits 2;
REDJAX_DEBUG=1 shows the full stack trace instead.
"""

from __future__ import annotations

import argparse
import os
import sys


def _train(args: argparse.Namespace) -> None:
    from redjax import distributed, train

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    train.run(*_config_args(args))


def _config_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """`redjax train a.b=1` has overrides but no config file: the first one is not a path."""
    if args.config and "=" in args.config and not os.path.isfile(args.config):
        return None, [args.config, *args.overrides]
    return args.config, args.overrides


def _generate(args: argparse.Namespace) -> None:
    from redjax import generate

    generate.main(args)


def _eval(args: argparse.Namespace) -> None:
    from redjax import evaluate

    evaluate.main(args)


def _export(args: argparse.Namespace) -> None:
    from redjax import runs

    runs.export(args.run_dir, args.out, step=args.step, peft=args.peft)


def _import(args: argparse.Namespace) -> None:
    from redjax.models import gguf

    print(gguf.import_gguf(args.file, args.out))


def _plan(args: argparse.Namespace) -> None:
    from redjax import plan

    plan.main(*_config_args(args), device_memory=args.device_memory, devices=args.devices)


def _info(args: argparse.Namespace) -> None:
    import jax

    import redjax

    print(f"redjax {redjax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")
    for d in jax.devices():
        print(f"  {d}")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    """The `eval` sub-command: n samples per problem, avg@n / pass@k / maj@n per file."""
    e = sub.add_parser("eval", help="avg@n / pass@k / maj@n of a model on benchmark files")
    e.add_argument("--model", required=True, help="Hugging Face folder or run folder")
    e.add_argument(
        "--data",
        required=True,
        action="append",
        help="JSONL/Parquet files, comma-separated or repeated; each gets its own row",
    )
    e.add_argument(
        "--n", type=int, default=None, help="samples per problem (default: the largest --k, else 1)"
    )
    e.add_argument(
        "--k",
        default=None,
        help="pass@k for each k, comma-separated, e.g. 1,8 (each <= n; default: n)",
    )
    e.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: 0, greedy, if n = 1, else 0.6; 0 with n > 1 is refused)",
    )
    e.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 = off)")
    e.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per response")
    e.add_argument(
        "--batch-size", type=int, default=32, help="prompts per sampler call (n rows each)"
    )
    e.add_argument("--fields", default="auto", help="field map preset of the data")
    e.add_argument("--limit", type=int, default=None, help="first N problems per file")
    e.add_argument(
        "--prompt-suffix", default=None, help="text after each prompt (default: the run's)"
    )
    e.add_argument("--raw", action="store_true", help="do not apply the chat template")
    e.add_argument("--seed", type=int, default=0, help="sampling seed")
    e.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype"
    )
    e.add_argument(
        "--json",
        default=None,
        help="write the summary and per-problem results to this JSON file, the table beside it (.md)",
    )
    e.set_defaults(fn=_eval)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redjax", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train with RED (no arguments: the embedded default)")
    t.add_argument("config", nargs="?", default=None, help="YAML config (default: built-in)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.group_size=8")
    t.add_argument("--coordinator", default=None, help="multi-host: coordinator host:port")
    t.add_argument("--num-processes", type=int, default=None)
    t.add_argument("--process-id", type=int, default=None)
    t.set_defaults(fn=_train)

    g = sub.add_parser("generate", help="sample completions from a model folder")
    g.add_argument("--model", required=True, help="Hugging Face folder or run folder")
    g.add_argument("--prompt", required=True, action="append", help="prompt text (repeatable)")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.set_defaults(fn=_generate)

    _eval_parser(sub)

    x = sub.add_parser("export", help="write a run's parameters as a Hugging Face folder")
    x.add_argument("run_dir")
    x.add_argument("out", help="the folder to write (a LoRA run's adapters merged in)")
    x.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    x.add_argument(
        "--peft", default=None, metavar="DIR", help="LoRA runs: also write a PEFT adapter folder"
    )
    x.set_defaults(fn=_export)

    im = sub.add_parser("import", help="write a GGUF file as a Hugging Face folder (float32)")
    im.add_argument("file", help="a .gguf file of a Llama, Qwen2 or Qwen3 model")
    im.add_argument("out", help="the folder to write (new or empty)")
    im.set_defaults(fn=_import)

    m = sub.add_parser("plan", help="memory per device for a config and mesh")
    m.add_argument("config", nargs="?", default=None)
    m.add_argument("overrides", nargs="*")
    m.add_argument("--device-memory", default=None, help="GiB, or v4 | v5e | v5p | h100")
    m.add_argument("--devices", type=int, default=None, help="device count (default: visible)")
    m.set_defaults(fn=_plan)

    i = sub.add_parser("info", help="versions and the devices JAX sees")
    i.set_defaults(fn=_info)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("REDJAX_DEBUG"):  # the full stack trace, for bug reports
            raise
        print(f"redjax: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
