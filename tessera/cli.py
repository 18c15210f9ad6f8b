"""The `tessera` command: generate, eval, demo, info."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _common(p: argparse.ArgumentParser) -> None:
    """Options of every command that runs the model, one argument group per backend in --help."""
    m = p.add_argument_group("model and device")
    m.add_argument("--model", default=None,
                   help="HF-format model dir, or 'dense' / 'moe' for an embedded reasoner (default: dense)")
    m.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    m.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    m.add_argument("--compile", action="store_true",
                   help="decode steps as one torch.compile graph (full or evictable dense KV; not with --quant, --tp, "
                        "--ep): faster steps after a one-time compile of tens of seconds")

    c = p.add_argument_group("KV compression (--press)", "R-KV and baselines: docs/kv_compression.md")
    c.add_argument("--press", default="none", help="KV compression method (default: none = full KV)")
    c.add_argument("--budget", type=int, default=None, help="KV budget in tokens per head")
    c.add_argument("--buffer", type=int, default=None, help="decoded tokens between compressions")
    c.add_argument("--window", type=int, default=None, help="observation window of recent queries")

    k = p.add_argument_group("ShadowKV / Quest (--kv)", "KV-cache backends: docs/shadowkv.md")
    k.add_argument("--kv", default="dense",
                   help="KV-cache backend: dense (default), shadowkv, or quest (ShadowKV's page-selection baseline)")
    k.add_argument("--sparse-budget", type=int, default=None, help="tokens attended per KV head (shadowkv, quest)")
    k.add_argument("--rank", type=int, default=None, help="rank of the low-rank key cache (shadowkv)")
    k.add_argument("--landmark", default=None, choices=["mean", "bounds"],
                   help="shadowkv chunk summary: mean key (the paper, default) or min/max bounds (2x landmark bytes)")
    k.add_argument("--chunk-size", type=int, default=None,
                   help="shadowkv tokens per chunk (default 8; bounds landmarks over 16 cost what mean over 8 does)")
    k.add_argument("--outlier-chunks", type=int, default=None, help="shadowkv dense outlier chunks (default 48)")
    k.add_argument("--local-chunks", type=int, default=None, help="shadowkv dense chunks at the prompt's end (default 4)")

    q = p.add_argument_group("quantization (--quant)", "NGEMM int8 / int4 kernels: docs/ngemm.md")
    q.add_argument("--quant", default="none", choices=["none", "w8a8", "w4a8"],
                   help="int8 (w8a8) or int4-weight (w4a8) linear layers")


def _parallel_group(p: argparse.ArgumentParser, title: str, flag: str, n_help: str, backend_flag: str,
                    backends: list[str], backend_help: str, doc: str) -> None:
    g = p.add_argument_group(title, f"one process per rank: torchrun --nproc-per-node N -m tessera ... {flag} N; {doc}")
    g.add_argument(flag, type=int, default=1, help=n_help)
    g.add_argument(backend_flag, default=None, choices=backends, help=backend_help)


def _tp_options(p: argparse.ArgumentParser) -> None:
    _parallel_group(p, "tensor parallelism (--tp)", "--tp", "tensor-parallel ranks (default 1: no parallelism)",
                    "--tp-backend", ["torch", "fused"], "how row-parallel layers reduce: torch (dist.all_reduce, the default) or fused "
                    "(TileLink-style Triton AllReduce over the symmetric heap; on CPU needs TRITON_INTERPRET=1)",
                    "docs/distributed.md")
    _parallel_group(p, "expert parallelism (--ep, MoE models)", "--ep",
                    "expert-parallel ranks: each keeps num_experts / N experts (with --tp M: M x N processes)",
                    "--moe-backend", ["torch", "decomposed", "pipelined", "fused", "comet"],
                    "token dispatch / combine: torch (all_to_all_single, the default), decomposed (one async send per "
                    "peer, experts run on each peer's rows as they land), pipelined (token chunks: one chunk's "
                    "all-to-all under the previous chunk's experts), fused (Triton puts into the peers' "
                    "buffers on the symmetric heap) or comet (COMET's fused layers: dispatch + first GEMM, second "
                    "GEMM + combine); fused and comet need TRITON_INTERPRET=1 on CPU", "docs/moe.md")


def _check_ranks(args, n: int, flag: str, backend: str | None, backend_flag: str, what: str) -> None:
    """One-line errors shared by --tp and --ep (n ranks, an optional backend choice)."""
    if n < 1:
        raise ValueError(f"{flag} must be >= 1, got {n}")
    if backend is not None and n == 1:
        raise ValueError(f"{backend_flag} {backend} needs {flag} N with N > 1: one process has nothing to {what}")
    if getattr(args, "quant", "none") != "none" and n > 1:
        raise ValueError(f"--quant with {flag} > 1 is not supported: the int8/int4 linears have no sharded form yet")
    if n > 1 and "RANK" not in os.environ:
        flags = [(f, k) for f, k in (("--tp", getattr(args, "tp", 1)), ("--ep", getattr(args, "ep", 1))) if k > 1]
        procs = getattr(args, "tp", 1) * getattr(args, "ep", 1)
        given = " ".join(f"{f} {k}" for f, k in flags)
        raise ValueError(f"{given} runs one process per rank: torchrun --nproc-per-node {procs} -m tessera "
                         f"{args.cmd} {given} ...")
    # Triton has no CPU target: there the fused kernels only run in its interpreter, which Triton
    # selects when a kernel is defined, so the variable must be set before tessera imports them
    if backend in ("fused", "comet") and not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{backend_flag} {backend} on CPU runs the Triton kernels in Triton's interpreter: "
                         "set TRITON_INTERPRET=1 (slow, for testing) or use --device cuda")


def _check_tp(args) -> tuple[int, str]:
    """(ranks, backend), or a one-line error for a combination that cannot run."""
    tp_size, backend = getattr(args, "tp", 1), getattr(args, "tp_backend", None)
    _check_ranks(args, tp_size, "--tp", backend, "--tp-backend", "reduce")
    return tp_size, backend or "torch"


def _check_ep(args) -> tuple[int, str]:
    """(expert-parallel ranks, dispatch backend), or a one-line error for a combination that cannot run."""
    ep, backend = getattr(args, "ep", 1), getattr(args, "moe_backend", None)
    _check_ranks(args, ep, "--ep", backend, "--moe-backend", "dispatch")
    return ep, backend or "torch"


def _init_ranks(args, tp: int, ep: int) -> None:
    """Under torchrun: the default process group of exactly tp x ep ranks and its named "tp" and "ep"
    groups (tensor-parallel ranks consecutive, expert-parallel ones strided over them)."""
    from tessera.distributed import parallel_state as ps

    ps.init_from_env("nccl" if args.device.startswith("cuda") else "gloo")
    if ps.world_size() != tp * ep:
        flags = " x ".join(f"{f} {n}" for f, n in (("--tp", tp), ("--ep", ep)) if n > 1)
        raise ValueError(f"{flags} needs {tp * ep} processes but torchrun started {ps.world_size()}")
    ps.initialize(tp=tp, ep=ep)


def _llm(args):
    from tessera.engine import LLM

    ep_size, ep_backend = _check_ep(args)  # first: it names the --tp / --ep combination
    tp_size, tp_backend = _check_tp(args)
    quant = getattr(args, "quant", "none")
    llm = LLM.load(args.model, device=args.device, dtype=DTYPES[args.dtype] if args.dtype else None)
    if quant != "none":
        from tessera.quant import quantize_model

        quantize_model(llm.model, quant)  # module swap + state-dict conversion, lm_head stays fp
    if tp_size * ep_size > 1:
        from tessera.distributed import parallel_state as ps

        _init_ranks(args, tp_size, ep_size)
    if tp_size > 1:  # every rank loads the full model, then keeps its shard (Megatron-style)
        from tessera.parallel import tp

        tp.shard_model(llm.model, group=ps.group("tp"), mode=tp_backend)
    if ep_size > 1:
        # every rank loads the full model, keeps its experts and serves the same requests (greedy: the same
        # steps on every rank, so the dispatch collectives line up)
        from tessera.parallel.ep import shard_experts

        shard_experts(llm.model, group=ps.group("ep"), backend=ep_backend)
    if getattr(args, "compile", False):
        from tessera.engine.compiled_decode import CompiledDecode

        llm.compiled = CompiledDecode(llm.model)  # last: it refuses quantized and sharded models
        print("compiling the decode step (tens of seconds)", file=sys.stderr, flush=True)
        llm.compile_now((1,) if args.cmd == "generate" else (1, 2))  # before anything is timed
    return llm


def _is_main(args) -> bool:
    """Only one rank prints under tensor or expert parallelism."""
    from tessera.distributed import parallel_state as ps

    single = getattr(args, "tp", 1) == 1 and getattr(args, "ep", 1) == 1
    return single or not ps.is_initialized() or ps.rank() == 0


def _press_kwargs(args) -> dict:
    """The press settings given on the command line (unset ones keep the press's defaults)."""
    return {k: getattr(args, k) for k in ("budget", "buffer", "window") if getattr(args, k) is not None}


def _press_factory(args):
    from tessera.kv.presses import make_press

    kw = _press_kwargs(args)
    if args.press in ("none", "full") and kw:  # full KV has nothing to configure: the flags would be dropped
        flags = ", ".join(f"--{k}" for k in kw)
        raise ValueError(f"--press is {args.press!r} (the full KV cache), so {flags} would be ignored: choose a "
                         "press, e.g. --press rkv")
    make_press(args.press, **kw)  # fail early on a bad name or bad settings
    return lambda: make_press(args.press, **kw)


def _kv(args) -> dict:
    """generate() keyword arguments selecting the KV backend."""
    names = ("sparse_budget", "rank", "landmark", "chunk_size", "outlier_chunks", "local_chunks")
    opts = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    return {"kv": args.kv, "kv_options": opts}


def _read_prompt(args) -> str | None:
    """The text of --prompt or --prompt-file (`-`: stdin), or None for a generated problem. Bytes that are
    not UTF-8 reach `sys.argv` as lone surrogates (PEP 383): refused here with the position, not deep in
    the tokenizer."""
    if args.prompt is not None and args.prompt_file is not None:
        raise ValueError("--prompt and --prompt-file are exclusive: give one")
    if args.prompt_file is not None:
        name = "stdin" if args.prompt_file == "-" else args.prompt_file
        try:
            raw = sys.stdin.buffer.read() if args.prompt_file == "-" else Path(args.prompt_file).read_bytes()
        except OSError as e:
            raise ValueError(f"--prompt-file: cannot read {name}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"--prompt-file: {name} is not UTF-8 text (byte {raw[e.start]:#04x} at offset "
                             f"{e.start})") from None
        if not text.strip():
            raise ValueError(f"--prompt-file: {name} holds no text")
        return text.removesuffix("\n")  # a file's final newline is not part of the prompt
    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = args.prompt[e.start].encode("utf-8", "surrogateescape")
            raise ValueError(f"--prompt is not valid UTF-8 (byte {bad[0]:#04x} at character {e.start}): pass UTF-8 "
                             "text, or the prompt through --prompt-file") from None
    return args.prompt


def _warn_ignored(args, has_prompt: bool) -> None:
    """Flags that the other flags make meaningless: a warning each (the run itself is well defined)."""
    if has_prompt:
        for flag, val, default in (("--difficulty", args.difficulty, None), ("--problem", args.problem, 1_000_000)):
            if val != default:
                warnings.warn(f"{flag} is ignored: it chooses a generated problem, and a prompt was given", stacklevel=2)
    if args.temperature == 0:
        for flag, val, default in (("--top-p", args.top_p, 1.0), ("--top-k", args.top_k, 0), ("--seed", args.seed, None)):
            if val != default:
                warnings.warn(f"{flag} is ignored at --temperature 0 (greedy decoding); set a temperature to sample",
                              stacklevel=2)


def _check_output(path: str | None) -> None:
    """A result file that cannot be written fails before the run, not after it (the file itself is written
    at the end, atomically)."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--output {path} is a directory: name a file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=True):
            pass
    except OSError as e:
        raise ValueError(f"--output {path} cannot be written: {e.strerror or e}") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"--output {path} cannot be written: permission denied")


def _write_output(path: str, text: str) -> None:
    out = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, prefix=f".{out.name}.", delete=False) as f:
        f.write(text)
    os.replace(f.name, out)


def _shadowkv_notes(args, prompt_lens: list[int], peak_kv_bytes: int | None = None, dense_kv_bytes: int = 0) -> list[str]:
    """ShadowKV's notes (`tessera.kv.shadowkv.notes`) for the options given on the command line."""
    if args.kv != "shadowkv":
        return []
    from tessera.kv.shadowkv.notes import shadowkv_notes

    return shadowkv_notes(_kv(args)["kv_options"], prompt_lens, peak_kv_bytes, dense_kv_bytes)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def cmd_generate(args) -> int:
    from tessera.config import SamplingParams
    from tessera.tasks.reasoning import make_problem, score

    if args.disagg:  # attention and experts on separate ranks: its own launcher (docs/moe.md)
        from tessera.parallel.disagg import launch

        return launch.generate(args, lambda: _llm(args), _press_factory(args), _kv(args))
    prompt = _read_prompt(args)  # before the model loads: a bad prompt costs nothing
    _warn_ignored(args, prompt is not None)
    llm = _llm(args)
    problem = None
    if prompt is None:
        problem = make_problem(args.problem, args.difficulty)
        prompt = problem.prompt
    sp = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, seed=args.seed, stop=tuple(args.stop or ()))
    stream = (lambda i, t, piece: print(piece, end="", flush=True)) if args.stream and _is_main(args) else None
    out = llm.generate([prompt], sp, press=_press_factory(args)(), stream=stream, **_kv(args))
    c, st = out.completions[0], out.stats
    if not _is_main(args):
        return 0
    if args.stream:
        print()
    else:
        print(c.text)
    print("-" * 60)
    if problem is not None:
        ok = score(problem, c.text)
        print(f"problem seed {problem.seed} (difficulty {problem.difficulty}): expected {problem.answer}, "
              f"{'correct' if ok else 'WRONG'}")
    print(f"finish: {c.finish_reason}  prompt tokens: {len(c.prompt_ids)}  generated: {len(c.token_ids)}")
    print(f"decode: {st.decode_tokens_per_s:.1f} tok/s  prefill: {st.prefill_s * 1e3:.1f} ms  "
          f"peak KV: {_mib(st.peak_kv_bytes)}")
    cfg = llm.config
    dense = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * llm.dtype.itemsize
             * (len(c.prompt_ids) + len(c.token_ids)))
    for note in _shadowkv_notes(args, [len(c.prompt_ids)], st.peak_kv_bytes, dense):
        print(f"note: {note}")
    if args.stats:
        _print_routing(st)
        _print_expert_parallel(llm)
    return 0


def _print_expert_parallel(llm) -> None:
    """Under --ep: per layer, what rank 0 sent to and received from each rank, bytes and phase times."""
    for i, block in llm.model.moe_blocks().items():
        if hasattr(block.stats, "summary"):
            print(f"layer {i:2d} expert parallel: {block.stats.summary()}")


def _print_routing(st) -> None:
    if not st.routing:
        print("routing: a dense model, no experts")
        return
    bal = st.balancedness
    for i, counts in st.routing.items():
        print(f"layer {i:2d} routing: tokens per expert {counts}  balancedness {bal[i]:.2f}")


def cmd_eval(args) -> int:
    from tessera.tasks.evaluate import evaluate

    _check_output(args.output)
    llm = _llm(args)
    res = evaluate(llm, n=args.n, seed_start=args.seed_start, batch_size=args.batch_size,
                   press_factory=_press_factory(args), difficulty=args.difficulty, **_kv(args))
    res.update(model=str(args.model or "embedded tiny-reasoner"), press=args.press, device=args.device, **_kv(args))
    print(f"accuracy {res['accuracy']:.3f} ({res['correct']}/{res['n']}, seeds {res['seeds'][0]}..{res['seeds'][1]}), "
          f"{res['tokens_per_s']:.0f} tok/s, peak KV {_mib(res['peak_kv_bytes'])}")
    if "balancedness" in res:
        print("balancedness per MoE layer (mean / max tokens per expert): "
              + " ".join(f"{v:.2f}" for v in res["balancedness"].values()))
    notes = []
    if args.kv == "shadowkv" and llm.tokenizer is not None:
        from tessera.tasks.reasoning import make_problem

        notes = _shadowkv_notes(args, [len(llm.tokenizer.encode(make_problem(s, args.difficulty).prompt))
                                       for s in range(args.seed_start, args.seed_start + args.n)])
    if notes:  # in the result file too, beside the figures they qualify
        res["notes"] = notes
        print("\n".join(f"note: {n}" for n in notes))
    if args.output:
        _write_output(args.output, json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def cmd_demo(args) -> int:
    """Held-out problems with the full KV cache and with a compressing press, side by side."""
    from tessera.config import SamplingParams
    from tessera.kv.presses import make_press
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem, score, solution_budget

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    llm = _llm(args)
    problems = [make_problem(EVAL_SEED_BASE + i) for i in range(args.n)]
    press = args.press if args.press not in ("none", "full") else "rkv"
    kw = _press_kwargs(args)
    kw.setdefault("budget", 256)
    runs = [("FullKV", lambda: None), (f"{press} (budget {kw['budget']})", lambda: make_press(press, **kw))]
    runs[1][1]()  # bad settings fail before the long run
    print(f"Tessera demo: {args.n} held-out register-program problems (seeds {EVAL_SEED_BASE}.."
          f"{EVAL_SEED_BASE + args.n - 1}), embedded model ({llm.model.num_parameters() / 1e6:.1f}M params), "
          f"greedy, batch {args.n}, {args.device}")
    rows = []
    for name, factory in runs:
        t0 = time.perf_counter()
        out = llm.generate([p.prompt for p in problems],
                           SamplingParams(max_new_tokens=solution_budget(llm.config.max_position_embeddings)), press=factory(), **_kv(args))
        wall = time.perf_counter() - t0
        print(f"\n{name}:")
        correct = 0
        for p, c in zip(problems, out.completions):
            ok = score(p, c.text)
            correct += ok
            tail = " ".join(c.text.split()[-6:])
            print(f"  seed {p.seed}: {p.difficulty:2d} steps, {len(c.token_ids):5d} tokens, expected {p.answer}, "
                  f"{'ok ' if ok else 'BAD'} ...{tail}")
        rows.append((name, correct, out.stats.peak_kv_bytes, out.stats.generated_tokens / wall))
    print(f"\n{'method':24s} {'accuracy':>9s} {'peak KV':>12s} {'tok/s':>8s}")
    for name, correct, kv, tps in rows:
        print(f"{name:24s} {correct:4d}/{args.n:<4d} {_mib(kv):>12s} {tps:8.0f}")
    return 0


def cmd_info(args) -> int:
    import tessera
    from tessera.engine.engine import resolve_model_path
    from tessera.kv.presses import PRESSES
    from tessera.models.loader import read_config

    print(f"tessera {tessera.__version__}  torch {torch.__version__}  python {sys.version.split()[0]}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    print(f"cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    path = resolve_model_path(args.model)
    cfg = read_config(path)
    print(f"model {path}: {cfg.model_type}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, head_dim {cfg.head_dim}, "
          f"vocab {cfg.vocab_size}, max positions {cfg.max_position_embeddings}")
    if cfg.num_experts:
        from tessera.models import CausalLM

        with torch.device("meta"):  # counts only: no weights are read
            m = CausalLM(cfg)
        moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        print(f"experts: {cfg.num_experts} per MoE layer ({moe_layers} of {cfg.num_hidden_layers} layers), "
              f"top-{cfg.num_experts_per_tok}, expert FFN {cfg.moe_intermediate_size}"
              + (f", shared expert FFN {cfg.shared_expert_intermediate_size}" if cfg.shared_expert_intermediate_size else "")
              + f"; parameters {m.num_parameters() / 1e6:.2f}M total, {m.num_active_parameters() / 1e6:.2f}M active")
    print(f"presses: {', '.join(sorted(PRESSES))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tessera", description="Tessera inference stack")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="generate from a prompt or a generated problem")
    _common(g)
    g.add_argument("--prompt", default=None, help="text prompt (default: a generated problem)")
    g.add_argument("--prompt-file", default=None, metavar="PATH",
                   help="read the prompt from a UTF-8 file ('-': stdin), for prompts longer than a command line")
    g.add_argument("--problem", type=int, default=1_000_000, help="problem seed when no --prompt")
    g.add_argument("--difficulty", type=int, default=None, help="steps of the generated problem")
    g.add_argument("--max-new-tokens", type=int, default=4096)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--stats", action="store_true", help="MoE models: tokens per expert and balancedness per layer; under --ep also rows sent / received per rank, bytes and dispatch / expert / combine time")
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    dg = g.add_argument_group("disaggregated attention and experts (--disagg, MoE models)",
                              "MegaScale-Infer-style: torchrun --nproc-per-node N+M -m tessera generate --model moe "
                              "--disagg attn=N,expert=M; docs/moe.md")
    dg.add_argument("--disagg", default=None, help="attn=N,expert=M or a plan file written by `tessera plan`")
    dg.add_argument("--micro-batches", type=int, default=None,
                    help="micro-batches per attention rank that ping-pong with the experts (default: the plan's, or 2)")
    dg.add_argument("--batch-size", type=int, default=None,
                    help="generated problems (seeds from --problem) split over the attention ranks "
                         "(default: attention ranks x micro-batches)")
    dg.add_argument("--m2n", choices=("p2p", "heap"), default="p2p",
                    help="the M2N token exchange: point-to-point torch.distributed, or the symmetric heap with "
                         "ready flags (CPU ranks on one host)")
    dg.add_argument("--batch-experts", action="store_true",
                    help="each expert rank makes one expert call per round over a request of every attention rank")
    _tp_options(g)
    g.set_defaults(fn=cmd_generate)

    e = sub.add_parser("eval", help="accuracy on N held-out problems")
    _common(e)
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--seed-start", type=int, default=1_000_000)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--difficulty", type=int, default=None)
    e.add_argument("--output", default=None, help="write the JSON result here")
    e.set_defaults(fn=cmd_eval)

    d = sub.add_parser("demo", help="solve a handful of problems and print accuracy, tok/s, KV memory")
    _common(d)
    d.add_argument("--n", type=int, default=8)
    d.set_defaults(fn=cmd_demo)

    i = sub.add_parser("info", help="versions, devices and the model's configuration")
    i.add_argument("--model", default=None)
    i.set_defaults(fn=cmd_info)
    from tessera.serve.command import add_serve_command  # argparse only: the server loads when it runs

    add_serve_command(sub)
    sub.add_parser("plan", add_help=False, help="MegaScale-Infer deployment plan from a profile of the layer halves "
                   "(tessera plan --help; docs/moe.md)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plan"]:  # the planner parses its own options
        from tessera.parallel.disagg.planner import main as plan_main

        return plan_main(argv[1:])
    args = build_parser().parse_args(argv)
    ok = False
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args.cmd)
        try:
            from tessera.engine.threads import set_threads

            set_threads()  # TESSERA_THREADS, else one torch thread (docs/serving.md, "Threads")
            rc = args.fn(args)
            ok = True
            return rc
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            # user errors get one clear line, not a stack trace
            print(f"tessera {args.cmd}: error: {_describe_error(e)}", file=sys.stderr)
            return 2
        finally:
            _leave_process_group(ok)


def _one_line_warning(cmd: str):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"tessera {cmd}: warning: {message}", file=sys.stderr)
    return show


_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "NCCL error")


def _describe_error(e: BaseException) -> str:
    """One line; a collective that failed because a peer died or hung says so (gloo's text names a socket)."""
    import re

    import torch.distributed as dist

    msg = " ".join(str(e).split())  # one line, whatever the library put in it
    if dist.is_available() and dist.is_initialized() and (
            isinstance(e, dist.DistError) or any(p in msg for p in _PEER_LOST)):
        msg = re.sub(r"^\[[^\]]*\.(cc|cpp):\d+\] ", "", msg)  # the C++ source position
        return f"rank {dist.get_rank()}: a collective failed: a peer process died or stopped responding ({msg})"
    return msg


def _leave_process_group(ok: bool) -> None:
    """Under torchrun, tear the process group down together after a run: a rank that exits while its peer's
    gloo pair is still open can make the peer abort (SIGABRT) at interpreter shutdown (seen once in CI).
    After an error there is no barrier: the peer may be dead or stuck, and waiting on it would turn one clear
    error into a second traceback (or a hang until the group's timeout)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if ok:
                dist.barrier()
        finally:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
