"""Deployment planner for disaggregated attention and experts: the search of MegaScale-Infer's
Algorithm 1 (arXiv 2504.02263, §4.2), and the `tessera plan` command.

Inputs, from a profile file (schema `tessera.disagg.profile/1`, below):
- per attention TP size, `Ta = k1 ba + k2`: one layer's attention half for `ba` sequences of one
  micro-batch on one attention replica, at the profiled context length;
- per expert TP size, `Te = k3 be + k4`: one layer's FFN half for `be` (token, expert) rows on one
  expert group (the paper: one expert per group; here `experts_per_group`, so a CPU run with 8 experts
  on 2 ranks is a plan too);
- `Tc` from a measured M2N curve (seconds per message size), the paper's Eq. 6: the larger of an
  attention GPU's send `ba K h / tpa` and an expert GPU's receive `be h / tpe`, in bytes;
- memory per GPU, the model's KV bytes per token and parameter bytes, and a cost per GPU.

Search: for every profiled (tpa, tpe), the number of attention replicas `na` from the balance rule
`na = k1 E / (k3 K epg)` (floor and ceiling, or fewer when `max_gpus` says so), every `m`, and by bisection the largest micro-batch
`ba` (global batch `B = ba m na`) whose decode step (`pingpong.total_time`) meets the time-between-tokens
limit and whose KV fits. With `strict` (the paper) the pipeline conditions Tc < Tf and
m >= 2 (1 + Tc / Tf) are constraints too. The best plan maximises tokens/s per GPU (or per cost).

The plan file (schema `tessera.disagg.plan/1`) is what a launcher reads: ranks [0, attention.ranks)
are attention ranks (`attention.replicas` data-parallel replicas of `attention.tp` ranks each), the
next `experts.ranks` are expert ranks (`experts.groups` groups of `experts.tp`, group g holding
`experts.placement[g]`), `micro_batches` and `global_batch` (sequences per decode step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tessera.parallel.disagg import pingpong

PROFILE_SCHEMA = "tessera.disagg.profile/1"
PLAN_SCHEMA = "tessera.disagg.plan/1"


def fit_linear(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a x + b -> (a, b, R^2)."""
    n = len(xs)
    if n < 2 or len(ys) != n or len(set(xs)) < 2:
        raise ValueError("a linear fit needs at least two distinct x values with one y each")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    b = my - a * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a * x + b)) ** 2 for x, y in zip(xs, ys))
    return a, b, (1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0


@dataclass(frozen=True)
class M2NCurve:
    """Seconds for one message of `nbytes`: piecewise linear through measured (bytes, seconds) points,
    the first point's time below them (a latency floor), the last segment's slope above them."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self):
        if len(self.points) < 2 or any(b <= 0 or t <= 0 for b, t in self.points):
            raise ValueError("an M2N curve needs >= 2 (bytes, seconds) points, all > 0")
        if list(self.points) != sorted(self.points) or len({b for b, _ in self.points}) != len(self.points):
            raise ValueError("M2N curve points must be sorted by distinct message sizes")

    @classmethod
    def alpha_beta(cls, alpha_s: float, bytes_per_s: float) -> M2NCurve:
        return cls(((1.0, alpha_s + 1.0 / bytes_per_s), (1e9, alpha_s + 1e9 / bytes_per_s)))

    def time(self, nbytes: float) -> float:
        p = self.points
        if nbytes <= p[0][0]:
            return p[0][1]
        for (b0, t0), (b1, t1) in zip(p, p[1:]):
            if nbytes <= b1:
                return t0 + (t1 - t0) * (nbytes - b0) / (b1 - b0)
        (b0, t0), (b1, t1) = p[-2], p[-1]
        return t1 + (t1 - t0) / (b1 - b0) * (nbytes - b1)


@dataclass(frozen=True)
class Profile:
    name: str  # model name
    layers: int
    hidden: int
    num_experts: int
    top_k: int
    act_bytes: int  # bytes per activation element on the wire
    kv_bytes_per_token: float  # all layers, one sequence's token
    context: int  # tokens of KV per sequence the attention fits were taken at
    attention_param_bytes: float  # all layers, one replica (split over its TP ranks)
    expert_param_bytes: float  # all layers, one expert (split over its TP ranks)
    attention: dict[int, tuple[float, float]]  # tpa -> (k1, k2), seconds per layer
    expert: dict[int, tuple[float, float]]  # tpe -> (k3, k4), seconds per layer
    m2n: M2NCurve
    memory_attention: float  # bytes per attention GPU
    memory_expert: float  # bytes per expert GPU
    cost_attention: float = 1.0  # per GPU, any unit
    cost_expert: float = 1.0
    experts_per_group: int = 1
    memory_usable: float = 0.9  # share of GPU memory weights and KV may take
    labels: dict = field(default_factory=dict)  # input -> 'measured: ...' / 'assumption: ...'

    @classmethod
    def from_json(cls, d: dict) -> Profile:
        if d.get("schema") != PROFILE_SCHEMA:
            raise ValueError(f"not a {PROFILE_SCHEMA} profile (schema {d.get('schema')!r})")
        try:
            m, hw = d["model"], d["hardware"]
            curve = d["m2n"]
            m2n = (M2NCurve(tuple(tuple(map(float, p)) for p in curve["points"])) if "points" in curve
                   else M2NCurve.alpha_beta(curve["alpha_s"], curve["bytes_per_s"]))
            p = cls(name=m["name"], layers=int(m["layers"]), hidden=int(m["hidden"]),
                    num_experts=int(m["num_experts"]), top_k=int(m["top_k"]), act_bytes=int(m["act_bytes"]),
                    kv_bytes_per_token=float(m["kv_bytes_per_token"]), context=int(d["context"]),
                    attention_param_bytes=float(m["attention_param_bytes"]),
                    expert_param_bytes=float(m["expert_param_bytes"]),
                    attention={int(t): (float(v["k1"]), float(v["k2"])) for t, v in d["attention"].items()},
                    expert={int(t): (float(v["k3"]), float(v["k4"])) for t, v in d["expert"].items()},
                    m2n=m2n, memory_attention=float(hw["attention"]["memory_bytes"]),
                    memory_expert=float(hw["expert"]["memory_bytes"]),
                    cost_attention=float(hw["attention"].get("cost", 1.0)),
                    cost_expert=float(hw["expert"].get("cost", 1.0)),
                    experts_per_group=int(d.get("experts_per_group", 1)),
                    memory_usable=float(hw.get("memory_usable", 0.9)), labels=d.get("labels", {}))
        except KeyError as e:
            raise ValueError(f"profile is missing {e}") from None
        if p.num_experts % p.experts_per_group:
            raise ValueError(f"experts_per_group {p.experts_per_group} does not divide {p.num_experts} experts")
        if not p.attention or not p.expert:
            raise ValueError("profile needs at least one attention and one expert fit")
        return p


@dataclass(frozen=True)
class Plan:
    tpa: int
    tpe: int
    na: int  # attention replicas
    m: int
    ba: int  # sequences per attention replica per micro-batch
    be: float  # (token, expert) rows per expert group per micro-batch
    ta: float
    te: float
    tc: float
    step_s: float  # one decode step of the global batch (time between tokens)
    gpus: int
    cost: float
    global_batch: int
    conditions: dict

    @property
    def tokens_per_s(self) -> float:
        return self.global_batch / self.step_s

    @property
    def per_gpu(self) -> float:
        return self.tokens_per_s / self.gpus

    @property
    def per_cost(self) -> float:
        return self.tokens_per_s / self.cost


def _expert_groups(p: Profile) -> int:
    return p.num_experts // p.experts_per_group


def evaluate(p: Profile, tpa: int, tpe: int, na: int, m: int, ba: int, balancedness: float = 1.0) -> Plan:
    """The predicted decode step of one configuration. `balancedness` (mean / max rows per expert group,
    <= 1): the most loaded group sets Te."""
    k1, k2 = p.attention[tpa]
    k3, k4 = p.expert[tpe]
    B = ba * m * na
    be = B * p.top_k * p.experts_per_group / (m * p.num_experts)  # mean rows per expert group
    ta, te = k1 * ba + k2, k3 * be / balancedness + k4
    tc = max(p.m2n.time(ba * p.top_k * p.hidden * p.act_bytes / tpa),
             p.m2n.time(be / balancedness * p.hidden * p.act_bytes / tpe))
    gpus = na * tpa + _expert_groups(p) * tpe
    cost = na * tpa * p.cost_attention + _expert_groups(p) * tpe * p.cost_expert
    return Plan(tpa, tpe, na, m, ba, be, ta, te, tc, pingpong.total_time(ta, te, tc, m, p.layers), gpus, cost, B,
                pingpong.conditions_hold(ta, te, tc, m))


def _fits_memory(p: Profile, tpa: int, m: int, ba: int) -> bool:
    kv = m * ba * p.context * p.kv_bytes_per_token  # every sequence of the replica keeps its KV
    return kv + p.attention_param_bytes <= tpa * p.memory_attention * p.memory_usable


def search(p: Profile, slo_s: float, *, max_gpus: int | None = None, m_max: int = 8, objective: str = "gpu",
           strict: bool = True, balancedness: float = 1.0, max_batch: int = 1 << 20) -> list[Plan]:
    """Every feasible plan's best batch, best first. Empty when nothing meets the limits."""
    if slo_s <= 0 or m_max < 1:
        raise ValueError(f"the time-between-tokens limit and m_max must be > 0, got {slo_s}, {m_max}")
    if objective not in ("gpu", "cost"):
        raise ValueError(f"objective must be 'gpu' or 'cost', got {objective!r}")
    plans = []
    for tpe in sorted(p.expert):
        if p.experts_per_group * p.expert_param_bytes > tpe * p.memory_expert * p.memory_usable:
            continue  # the experts do not fit on this many GPUs
        for tpa in sorted(p.attention):
            k1, k3 = p.attention[tpa][0], p.expert[tpe][0]
            na_bal = k1 * p.num_experts / (k3 * p.top_k * p.experts_per_group) if k3 > 0 else 1.0
            # the balance rule's replica count, or as many replicas as the GPU limit leaves
            cap = (max_gpus - _expert_groups(p) * tpe) // tpa if max_gpus is not None else math.inf
            if cap < 1:
                continue
            for na in sorted({min(max(1, math.floor(na_bal)), cap), min(max(1, math.ceil(na_bal)), cap)}):
                for m in range(1, m_max + 1):
                    best = _largest_batch(p, tpa, tpe, na, m, slo_s, strict, balancedness, max_batch)
                    if best is not None:
                        plans.append(best)
    key = (lambda q: q.per_gpu) if objective == "gpu" else (lambda q: q.per_cost)
    return sorted(plans, key=lambda q: (-key(q), q.step_s))


def _ok(q: Plan, slo_s: float, strict: bool) -> bool:
    return q.step_s <= slo_s and (not strict or (q.conditions["tc_below_tf"] and q.conditions["enough_micro_batches"]))


def _largest_batch(p, tpa, tpe, na, m, slo_s, strict, bal, max_batch) -> Plan | None:
    def feasible(ba):  # the step time and the KV grow with ba: bisect on them
        return _fits_memory(p, tpa, m, ba) and evaluate(p, tpa, tpe, na, m, ba, bal).step_s <= slo_s

    if not feasible(1):
        return None
    lo, hi = 1, 2
    while hi <= max_batch and feasible(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, max_batch + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
    # the pipeline conditions are not monotone in ba: take the largest batch that also meets them
    near = list(range(lo, max(0, lo - 256), -1))  # one by one near the top, then halving
    for ba in near + [b for b in (lo >> s for s in range(9, 40)) if 0 < b < near[-1]]:
        q = evaluate(p, tpa, tpe, na, m, ba, bal)
        if _ok(q, slo_s, strict):
            return q
    return None


def plan_json(p: Profile, q: Plan, slo_s: float, placement: list[list[int]] | None = None, source: str = "") -> dict:
    groups = _expert_groups(p)
    if placement is None:
        placement = [list(range(g * p.experts_per_group, (g + 1) * p.experts_per_group)) for g in range(groups)]
    return {
        "schema": PLAN_SCHEMA, "model": p.name, "profile": source,
        "attention": {"replicas": q.na, "tp": q.tpa, "ranks": q.na * q.tpa},
        "experts": {"groups": len(placement), "tp": q.tpe, "ranks": len(placement) * q.tpe, "placement": placement},
        "micro_batches": q.m, "global_batch": q.global_batch,
        "micro_batch": {"sequences_per_attention_replica": q.ba, "rows_per_expert_group": q.be},
        "time_between_tokens_limit_s": slo_s,
        "predicted": {"ta_s": q.ta, "te_s": q.te, "tc_s": q.tc, "step_s": q.step_s,
                      "tokens_per_s": q.tokens_per_s, "tokens_per_s_per_gpu": q.per_gpu,
                      "tokens_per_s_per_cost": q.per_cost, "gpus": q.gpus, "conditions": q.conditions,
                      "knee_m": pingpong.knee(q.ta, q.te, q.tc)},
    }


def _row(q: Plan) -> str:
    return (f"tpa {q.tpa} tpe {q.tpe} attention replicas {q.na:3d}  m {q.m}  batch {q.global_batch:6d}  "
            f"Ta {q.ta * 1e3:8.3f} Te {q.te * 1e3:8.3f} Tc {q.tc * 1e3:7.3f} ms  step {q.step_s * 1e3:8.2f} ms  "
            f"{q.tokens_per_s:10.1f} tok/s  {q.per_gpu:9.1f} per GPU ({q.gpus} GPUs)")


def main(argv: list[str] | None = None) -> int:
    """`tessera plan --profile P.json [--slo-ms 150] [--out plan.json]`: print the best plans, write the best."""
    from tessera.parallel.disagg import replication

    ap = argparse.ArgumentParser(prog="tessera plan", description="MegaScale-Infer deployment plan "
                                 "(arXiv 2504.02263, Algorithm 1) from a profile of the two layer halves; docs/moe.md")
    ap.add_argument("--profile", required=True, help=f"profile JSON ({PROFILE_SCHEMA}); "
                    "scripts/profile_moe_halves.py writes one")
    ap.add_argument("--slo-ms", type=float, default=150.0, help="time-between-tokens limit (default 150 ms, the paper's)")
    ap.add_argument("--max-gpus", type=int, default=None, help="at most this many ranks in all")
    ap.add_argument("--m-max", type=int, default=8, help="largest number of micro-batches tried")
    ap.add_argument("--objective", default="gpu", choices=["gpu", "cost"], help="tokens/s per GPU or per cost")
    ap.add_argument("--no-strict", action="store_true",
                    help="do not require the pipeline conditions (Tc < Tf, m >= 2(1 + Tc/Tf)); allows m = 1, 2")
    ap.add_argument("--routing", default=None, help="JSON with per-layer tokens per expert ({'routing': {layer: "
                    "[counts]}}): replicate hot experts and plan for the resulting balancedness")
    ap.add_argument("--spare-slots", type=int, default=1, help="extra expert slots per group with --routing")
    ap.add_argument("--top", type=int, default=5, help="plans printed")
    ap.add_argument("--out", default=None, help="write the best plan here")
    args = ap.parse_args(argv)
    try:
        path = Path(args.profile)
        prof = Profile.from_json(json.loads(path.read_text()))
        bal, placement = 1.0, None
        if args.routing:
            routing = json.loads(Path(args.routing).read_text())["routing"]
            loads = [sum(c[e] for c in routing.values()) for e in range(prof.num_experts)]
            groups = _expert_groups(prof)
            before = replication.contiguous(loads, groups)
            after = replication.replicate(loads, groups, prof.experts_per_group + args.spare_slots)
            bal, placement = after.balancedness, after.ranks
            print(f"hot experts: balancedness over {groups} expert groups {before.balancedness:.3f} -> "
                  f"{after.balancedness:.3f} with {args.spare_slots} spare slot(s) per group; replicas {after.replicas}")
        plans = search(prof, args.slo_ms / 1e3, max_gpus=args.max_gpus, m_max=args.m_max, objective=args.objective,
                       strict=not args.no_strict, balancedness=bal)
    except (OSError, ValueError, KeyError) as e:
        print(f"tessera plan: error: {e}", file=sys.stderr)
        return 2
    if not plans:
        print(f"tessera plan: no plan meets a {args.slo_ms} ms time between tokens and the memory limits"
              + ("" if args.no_strict else " with the pipeline conditions (try --no-strict)"), file=sys.stderr)
        return 1
    print(f"model {prof.name}: {prof.layers} layers, {prof.num_experts} experts, top-{prof.top_k}; "
          f"limit {args.slo_ms} ms between tokens; {len(plans)} feasible configurations, best {min(args.top, len(plans))}:")
    for q in plans[: args.top]:
        print("  " + _row(q))
    best = plans[0]
    raw = json.loads(path.read_text())
    for side, key, have in (("attention", "sequences", best.ba), ("expert", "rows", best.be)):
        pts = raw[side].get(str(best.tpa if side == "attention" else best.tpe), {}).get("points", [])
        if pts and have > max(pt[key] for pt in pts):
            print(f"note: the plan's {have:.0f} {key} per {side} micro-batch lie beyond the profiled "
                  f"{max(pt[key] for pt in pts)}: the linear fit is extrapolated")
    print(f"plan: {best.na * best.tpa} attention ranks (tp {best.tpa}), {_expert_groups(prof) * best.tpe} expert ranks "
          f"(tp {best.tpe}), {best.m} micro-batches, global batch {best.global_batch}: predicted "
          f"{best.tokens_per_s:.1f} tok/s, {best.per_gpu:.1f} tok/s per rank, step {best.step_s * 1e3:.2f} ms")
    if args.out:
        out = plan_json(prof, best, args.slo_ms / 1e3, placement, str(path))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


__all__ = ["M2NCurve", "Plan", "Profile", "evaluate", "fit_linear", "main", "plan_json", "search"]
