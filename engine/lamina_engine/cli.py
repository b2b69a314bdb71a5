"""`lamina` console script. Subcommands: generate (more arrive with serving and benchmarks)."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="checkpoint folder (default: the built-in demo model)"
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--scheduler", default="chunked", choices=["chunked", "layered"])
    p.add_argument("--layered-budget", type=int, default=8192, help="cohort token budget B")
    p.add_argument("--layered-max-groups", type=int, default=16, help="most layer groups Gmax")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-gpu-blocks", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument(
        "--speed-prefill-layers",
        type=_layers_or_fraction,
        default=None,
        help="SPEED: layers prompt tokens run (a count like 24, or a fraction like 0.75); "
        "off unless given or set in the model's config.json",
    )
    p.add_argument(
        "--speed-anchors", type=int, default=1, help="SPEED: leading prompt tokens at full depth"
    )


def _layers_or_fraction(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a layer count (24) or a fraction (0.75), got {text!r}"
            ) from None


def _speed_setting(args: argparse.Namespace) -> dict | None:
    k = getattr(args, "speed_prefill_layers", None)
    return None if k is None else {"prefill_layers": k, "anchors": args.speed_anchors}


def engine_kwargs(args: argparse.Namespace) -> dict:
    from lamina_engine.demo import demo_model_path

    return dict(
        model=args.model or str(demo_model_path()),
        dtype=args.dtype,
        device=args.device,
        scheduler=args.scheduler,
        layered_budget=args.layered_budget,
        layered_max_groups=args.layered_max_groups,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        num_gpu_blocks=args.num_gpu_blocks,
        max_model_len=args.max_model_len,
        speed=_speed_setting(args),
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from lamina_engine import LLM, SamplingParams

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
    kwargs = engine_kwargs(args)
    llm = LLM(progress=True, **kwargs)
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
    from lamina_engine.bench import vs_hf

    return vs_hf.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamina", description="Lamina: serve MoE LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text offline from one or more prompts")
    g.add_argument("prompt", nargs="+", help="prompt text (several prompts run as one batch)")
    _add_engine_args(g)
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
        choices=["vs-hf", "engine", "serve"],
        help="vs-hf: throughput against HF generate(); engine: workload replay on a simulated "
        "clock (layered vs chunked, SPEED); serve: load a running OpenAI endpoint (wall clock)",
    )
    b.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own flags")
    b.set_defaults(func=cmd_bench)
    from lamina_engine.serving.commands import register as register_serving

    register_serving(sub)  # serve, up
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
