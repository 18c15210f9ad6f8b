"""The `tessera serve` command line: its options and the start-up (the app itself is in app.py)."""

from __future__ import annotations


def add_serve_command(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (docs/serving.md)")
    s.add_argument("--model", default=None, help="checkpoint directory, or 'dense' / 'moe' (embedded)")
    s.add_argument("--served-model-name", default=None, help="the name clients pass as `model` "
                   "(default: the checkpoint directory's name)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="default 8000")
    s.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    s.add_argument("--kv-cap-mib", type=float, default=None,
                   help="cap on the KV memory running requests can grow to; later requests wait (FIFO; "
                   "default: no cap)")
    s.add_argument("--max-running", type=int, default=None, help="most requests in the running batch")
    s.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens of a request that sets none (default 256)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: TESSERA_THREADS, else 1; docs/serving.md)")
    s.add_argument("--compile", action="store_true",
                   help="decode steps as one torch.compile graph (compiled before the server starts listening)")
    s.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    s.set_defaults(fn=run)


def run(args) -> int:
    import torch

    from tessera.engine.engine import LLM, resolve_model_path
    from tessera.engine.threads import set_threads
    from tessera.serve.app import build_app
    from tessera.serve.runner import serve

    set_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    llm = LLM.load(args.model, device=args.device, dtype=dtype, compile=args.compile)
    if args.compile:  # compile now, not in the first client's request
        print("tessera serve: compiling the decode step (tens of seconds)", flush=True)
        llm.compile_now()
    name = args.served_model_name or resolve_model_path(args.model).name
    cap = int(args.kv_cap_mib * 2**20) if args.kv_cap_mib is not None else None
    app = build_app(llm, name, kv_cap_bytes=cap, max_running=args.max_running,
                    default_max_tokens=args.default_max_tokens)
    print(f"tessera serve: {name} on http://{args.host}:{args.port}/v1 ({torch.get_num_threads()} torch threads)")
    serve(app, args.host, args.port, args.log_level)
    return 0
