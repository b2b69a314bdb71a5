"""`lamina` console script. Subcommands: generate, bench, serve, up, fetch-model."""

from __future__ import annotations

import argparse
import logging
import sys
import time

# Flag names of earlier releases, still accepted (the setting's own flag is derived).
ENGINE_FLAG_ALIASES = {"scheduling_policy": ["--scheduler"]}
# `lamina generate --seed` seeds the requests' sampling (SamplingParams.seed); the engine-wide
# seed stays at its default there.
GENERATE_EXCLUDES = {"seed"}


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """A flag per EngineConfig setting (`--model` defaults to the built-in demo model)."""
    from lamina_engine.config import EngineConfig
    from lamina_engine.flags import add_flags

    add_flags(
        p, EngineConfig, exclude=GENERATE_EXCLUDES, aliases=ENGINE_FLAG_ALIASES, reads_env=False
    )


def engine_config(args: argparse.Namespace):
    """The EngineConfig the flags describe (`lamina generate` reads no LAMINA_* variables)."""
    from lamina_engine.config import EngineConfig
    from lamina_engine.demo import demo_model_path
    from lamina_engine.flags import build

    demo = {"model": str(demo_model_path())}
    return build(EngineConfig, args, env={}, defaults=demo, exclude=GENERATE_EXCLUDES)


def cmd_generate(args: argparse.Namespace) -> int:
    from lamina_engine import SamplingParams

    config = engine_config(args)  # a bad setting fails here, before torch and the model load
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        seed=args.seed,
        stop=args.stop or None,
        ignore_eos=args.ignore_eos,
    )
    from lamina_engine import LLM

    llm = LLM(config, progress=True)
    t0 = time.perf_counter()
    if args.chat:
        outs = llm.chat([{"role": "user", "content": p} for p in args.prompt][:1], params)
    else:
        outs = llm.generate(args.prompt, params)
    dt = time.perf_counter() - t0
    failed = 0
    for out in outs:
        if out.finish_reason == "error":
            print(f"error: {out.error}", file=sys.stderr)
            failed += 1
            continue
        print(out.text if args.chat else (out.prompt or "") + out.text)
    n = sum(len(o.token_ids) for o in outs)
    print(
        f"[{n} tokens in {dt:.2f}s, finish: {', '.join(str(o.finish_reason) for o in outs)}]",
        file=sys.stderr,
    )
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.which == "engine":
        from lamina_engine.bench import engine_bench

        return engine_bench.main(args.rest)
    if args.which == "serve":
        from lamina_engine.bench import serve_bench

        return serve_bench.main(args.rest)
    if args.which == "kernels":
        from lamina_engine.bench import kernels

        return kernels.main(args.rest)
    from lamina_engine.bench import vs_hf

    return vs_hf.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamina", description="Lamina: serve MoE LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text offline from one or more prompts")
    g.add_argument("prompt", nargs="+", help="prompt text (several prompts run as one batch)")
    add_engine_args(g)
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    g.set_defaults(func=cmd_generate)
    b = sub.add_parser("bench", help="run a benchmark (see docs/benchmarks.md)")
    b.add_argument(
        "which",
        choices=["vs-hf", "engine", "serve", "kernels"],
        help="vs-hf: throughput against HF generate(); engine: workload replay on a simulated "
        "clock (layered vs chunked, SPEED); serve: load a running OpenAI endpoint (wall clock); "
        "kernels: Triton vs torch kernels against the device's measured peaks",
    )
    b.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own flags")
    b.set_defaults(func=cmd_bench)
    from lamina_engine.serving.commands import register as register_serving

    register_serving(sub)  # serve, up
    from lamina_engine.model_fetch.command import register as register_fetch

    register_fetch(sub)  # fetch-model
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lamina {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
