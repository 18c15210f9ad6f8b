"""`tessera generate --disagg attn=N,expert=M --micro-batches m` (or `--disagg plan.json`, a file written by
`tessera plan`): one torchrun launch of N + M processes, attention on the first N, experts on the others.

Every check that needs no weights runs first, on every rank (the rank counts against the launch, the
expert count against the expert ranks, what a plan asks that this runtime cannot do), so a bad launch is
one line on each rank before any weight is read. The batch is `--batch-size` generated problems (default
N x m, seeds from `--problem`), split contiguously over the attention ranks; rank 0 prints every answer
in problem order and each rank's busy time. `--m2n p2p|heap` picks the M2N backend (`m2n.make_m2n`: point-to-
point torch.distributed, or the symmetric heap with ready flags on CPU ranks); `--batch-experts` makes each
expert rank answer one request of every attention rank per expert call.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

SPEC = re.compile(r"^attn=(\d+),expert=(\d+)$")


def parse(spec: str) -> tuple[int, int, int | None]:
    """`attn=N,expert=M` or a plan file -> (N, M, the plan's micro-batches or None)."""
    m = SPEC.match(spec.replace(" ", ""))
    if m:
        return int(m[1]), int(m[2]), None
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--disagg takes attn=N,expert=M or a plan file from `tessera plan`; {spec!r} is neither")
    try:
        plan = json.loads(path.read_text())
        attn, experts = plan["attention"], plan["experts"]
        n, mm = int(attn["ranks"]), int(experts["ranks"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--disagg {spec}: not a plan file from `tessera plan` ({type(e).__name__}: {e})") from e
    if attn.get("tp", 1) != 1 or experts.get("tp", 1) != 1:
        raise ValueError(f"--disagg {spec}: the plan asks attention TP {attn.get('tp')} / expert TP "
                         f"{experts.get('tp')}; this runtime runs TP 1 on both sides")
    placement = experts.get("placement")
    # each expert placed exactly once: any copy makes the sorted list differ from 0..n-1
    if placement and sorted(e for g in placement for e in g) != list(range(sum(map(len, placement)))):
        raise ValueError(f"--disagg {spec}: the plan replicates hot experts; this runtime places each expert once")
    return n, mm, int(plan.get("micro_batches", 1))


def check(args, cfg) -> tuple[int, int, int]:
    """(attention ranks, expert ranks, micro-batches), or a one-line ValueError (no weights read yet)."""
    attn, expert, plan_m = parse(args.disagg)
    m = args.micro_batches or plan_m or 2
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ:
        raise ValueError(f"--disagg runs one process per rank: torchrun --nproc-per-node {attn + expert} -m tessera "
                         f"generate --disagg {args.disagg} ...")
    if world != attn + expert:
        raise ValueError(f"--disagg attn={attn},expert={expert} needs {attn + expert} processes but torchrun "
                         f"started {world}")
    if not cfg.num_experts:
        raise ValueError("--disagg needs an MoE model (e.g. --model moe); this one has no routed experts")
    if cfg.num_experts % expert:
        raise ValueError(f"--disagg: num_experts={cfg.num_experts} does not divide over {expert} expert ranks")
    if m < 1:
        raise ValueError(f"--micro-batches must be >= 1, got {m}")
    if getattr(args, "tp", 1) > 1 or getattr(args, "ep", 1) > 1 or getattr(args, "quant", "none") != "none":
        raise ValueError("--disagg runs alone: not with --tp, --ep or --quant")
    if getattr(args, "m2n", "p2p") == "heap" and not getattr(args, "device", "cpu").startswith("cpu"):
        raise ValueError("--m2n heap runs on CPU ranks (one host's shared memory); use --m2n p2p on GPUs")
    return attn, expert, m


def generate(args, load_llm, press_factory, kv_kwargs: dict) -> int:
    """The CLI's `generate --disagg` (load_llm() loads the model; called after every check)."""
    import torch.distributed as dist

    from tessera.config import SamplingParams
    from tessera.distributed import parallel_state as ps
    from tessera.engine.engine import resolve_model_path
    from tessera.engine.stopping import StopChecker
    from tessera.models.loader import read_config
    from tessera.parallel.disagg import runtime
    from tessera.tasks.reasoning import make_problem, score

    attn, expert, m = check(args, read_config(resolve_model_path(args.model)))
    ps.init_from_env("nccl" if args.device.startswith("cuda") else "gloo")
    llm = load_llm()
    backend, batch = getattr(args, "m2n", "p2p"), getattr(args, "batch_experts", False)
    d = runtime.setup(llm.model, attn, expert, slots=m, backend=backend, batch=batch)  # a result slot per micro-batch
    n = args.batch_size or attn * m
    problems = [make_problem(args.problem + i, args.difficulty) for i in range(n)]
    sp = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, seed=args.seed, stop=tuple(args.stop or ()))
    eos = set(llm.config.eos_ids) | ({llm.tokenizer.eos_id} if llm.tokenizer.eos_id is not None else set())
    if d.is_attention:
        r = ps.rank()
        mine = problems[n * r // attn: n * (r + 1) // attn]
        stops = d.generate([llm.tokenizer.encode(p.prompt) for p in mine], m, sp,
                           lambda: StopChecker(sp, eos, llm.tokenizer.decode), press_factory=press_factory,
                           **kv_kwargs)
        texts = [s.text() for s in stops]
        reasons = [s.reason for s in stops]
    else:
        d.serve()
        texts, reasons = [], []
    gathered = [None] * (attn + expert)
    dist.all_gather_object(gathered, (texts, reasons, d.stats.line()))
    if ps.rank() != 0:
        return 0
    texts = [t for g in gathered[:attn] for t in g[0]]
    reasons = [x for g in gathered[:attn] for x in g[1]]
    correct = 0
    for p, text, why in zip(problems, texts, reasons):
        ok = score(p, text)
        correct += ok
        print(text)
        print(f"problem seed {p.seed} (difficulty {p.difficulty}): expected {p.answer}, "
              f"{'correct' if ok else 'WRONG'}; finish: {why}")
        print("-" * 60)
    print(f"{correct}/{n} correct; {attn} attention + {expert} expert ranks, {m} micro-batches per attention rank, "
          f"M2N over {backend}{', batched expert calls' if batch else ''}")
    for g in gathered:
        print(g[2])
    return 0
