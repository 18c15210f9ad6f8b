"""The step-level engine: requests come and go between decode steps (continuous batching).

    rid = engine.add_request(prompt_ids, SamplingParams(...), press=..., kv="dense")
    while engine.has_unfinished():
        for out in engine.step(): ...   # at most one new token per request per step
    engine.abort(rid)                   # frees its KV at once

One `step()`: (1) one decode forward over every running request, (2) requests that finished leave their
cache at once (`cache.select`), (3) the scheduler admits waiting requests that fit under the KV cap,
oldest first, (4) they are prefilled together, sample their first token, and join the running batch.
Running requests live in cohorts, one cache per KV setting (`cohort.py`), so two requests of one batch
can use different presses, budgets or backends. Continuous batching as in Orca (Yu et al., OSDI 2022)
and vLLM (Kwon et al., SOSP 2023, arXiv 2309.06180); the prefill-then-decode step follows nano-vllm's
scheduler (github.com/GeeeekExplorer/nano-vllm `nanovllm/engine/scheduler.py`).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import torch

from tessera.config import SamplingParams
from tessera.engine.cohort import Cohort, forward_cache
from tessera.engine.compiled_decode import CompiledDecode
from tessera.engine.kv_budget import kv_bound
from tessera.engine.outputs import Completion, GenerationStats, RequestOutput
from tessera.engine.request import Request
from tessera.engine.sampling import apply_penalties, make_generator, sample_rows, token_logprobs
from tessera.engine.scheduler import Scheduler
from tessera.engine.stopping import StopChecker
from tessera.kv import make_cache
from tessera.kv.cache import StepContext
from tessera.kv.presses import NoPress, Press


class StepEngine:
    """Continuous batching over one model. `decode(ids) -> str` turns tokens into text (None: no text);
    `eos_ids` end a request unless it sets `ignore_eos`; `kv_cap_bytes` caps the KV all requests can grow to."""

    def __init__(self, model, decode=None, eos_ids=(), kv_cap_bytes: int | None = None,
                 max_running: int | None = None, compiled: CompiledDecode | None = None):
        self.model, self.config = model, model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.layout = model.kv_layout()
        # the heads this process holds (fewer than the config's under tensor parallelism)
        self.local_cfg = replace(self.config, num_attention_heads=self.layout.num_heads,
                                 num_key_value_heads=self.layout.num_kv_heads)
        self.decode = decode or (lambda ids: "")
        self.eos_ids = set(eos_ids)
        self.scheduler = Scheduler(kv_cap_bytes, max_running)
        self.running: list[Cohort] = []
        self.stats = GenerationStats()
        self._ids = itertools.count()
        self.compiled = compiled  # the compiled decode step, used whenever the running batch is eligible

    # ---- requests ---------------------------------------------------------------------------
    def make_request(self, prompt_ids: list[int], params: SamplingParams | None = None, press: Press | None = None,
                     kv: str = "dense", kv_options: dict | None = None, request_id: str | None = None,
                     index: int = 0) -> Request:
        """Check a request and build it, without touching the engine's state (any thread may call this)."""
        sp = params or SamplingParams()
        press = press or NoPress()
        if not isinstance(sp, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(sp).__name__}")
        if not isinstance(press, Press):
            raise TypeError(f"press must be a Press object (e.g. make_press('rkv', budget=128)), got "
                            f"{type(press).__name__} {press!r}")
        if not isinstance(kv, str):
            raise TypeError(f"kv must be a KV backend name, got {type(kv).__name__} {kv!r}")
        opts = dict(kv_options or {})
        max_pos = self.config.max_position_embeddings
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= max_pos:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's maximum is {max_pos} positions, "
                             "which leaves no room to generate")
        press.validate(max_pos)
        make_cache(kv, self.local_cfg, 1, self.dtype, self.device, press, **opts)  # bad name or options: raise now
        eos = set() if sp.ignore_eos else self.eos_ids
        bound = kv_bound(press, self.layout, self.dtype, len(prompt_ids), sp.max_new_tokens, max_pos)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        req = Request(rid, list(prompt_ids), sp, press, kv, opts, StopChecker(sp, eos, self.decode),
                      make_generator(sp, index, self.device), bound, index=index,
                      logprobs=[] if sp.logprobs is not None else None)
        self.scheduler.check(req)
        return req

    def add(self, req: Request) -> str:
        req.arrival = time.perf_counter()
        self.scheduler.add(req)
        self.stats.prompt_tokens += len(req.prompt_ids)
        return req.id

    def add_request(self, prompt_ids, params=None, press=None, kv="dense", kv_options=None,
                    request_id=None, index: int = 0) -> str:
        return self.add(self.make_request(prompt_ids, params, press, kv, kv_options, request_id, index))

    def abort(self, request_id: str) -> bool:
        """Drop a waiting or running request; a running one's KV is freed now. False if unknown."""
        if self.scheduler.remove(request_id) is not None:
            return True
        for c in self.running:
            for i, r in enumerate(c.reqs):
                if r.id == request_id:
                    c.retire([j for j in range(len(c.reqs)) if j != i])
                    self.running = [c for c in self.running if c.reqs]
                    return True
        return False

    # ---- state ------------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return bool(self.running or self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return sum(len(c.reqs) for c in self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def kv_bytes(self) -> int:
        """Bytes the running requests' caches hold now."""
        return sum(c.cache.nbytes() for c in self.running)

    # ---- one step ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        outs: list[RequestOutput] = []
        if self.running:
            t0 = time.perf_counter()
            self._decode(outs)
            self.stats.decode_s += time.perf_counter() - t0
        admitted = self.scheduler.admit(self.running)
        if admitted:
            t0 = time.perf_counter()
            self._prefill(admitted, outs)
            self.stats.prefill_s += time.perf_counter() - t0
        return outs

    def _decode(self, outs: list[RequestOutput]) -> None:
        reqs = [r for c in self.running for r in c.reqs]
        dev = self.device
        tok = torch.tensor([r.last_token for r in reqs], dtype=torch.long, device=dev)
        pos = torch.tensor([r.next_position for r in reqs], dtype=torch.long, device=dev)[:, None]  # [B, 1]
        if self.compiled is not None and CompiledDecode.eligible(self.running):
            logits = self.compiled(self.running[0].cache, tok, pos[:, 0])  # [B, V]
        else:
            ctx = StepContext(positions=pos, new_lens=torch.ones(len(reqs), dtype=torch.long, device=dev),
                              is_prefill=False)
            logits = self.model(tok[:, None], pos, forward_cache(self.running, ctx), ctx)[:, -1]  # [B, V]
        for r in reqs:
            r.decoded += 1
        for c in self.running:
            c.press.after_decode(c.cache, c.decoded(dev))
        self.stats.decode_steps += 1
        self._sample_and_retire(self.running, logits, outs)

    def _prefill(self, admitted: list[Request], outs: list[RequestOutput]) -> None:
        groups: dict[tuple, list[Request]] = {}
        for r in admitted:
            groups.setdefault(r.cohort_key, []).append(r)
        dev = self.device
        new = [Cohort(key, make_cache(g[0].kv, self.local_cfg, len(g), self.dtype, dev, g[0].press, **g[0].kv_options), g)
               for key, g in groups.items()]
        reqs = [r for c in new for r in c.reqs]
        lens = torch.tensor([len(r.prompt_ids) for r in reqs], device=dev)
        S = int(lens.max())
        inp = torch.zeros(len(reqs), S, dtype=torch.long, device=dev)  # right-padded prompts [B, S]
        for i, r in enumerate(reqs):
            inp[i, : len(r.prompt_ids)] = torch.tensor(r.prompt_ids, device=dev)
        pos = torch.arange(S, device=dev).expand(len(reqs), S)
        ctx = StepContext(positions=pos, new_lens=lens, is_prefill=True)
        logits = self.model(inp, pos, forward_cache(new, ctx), ctx, logits_index=lens - 1)[:, -1]  # [B, V]
        for c in new:
            c.press.after_prefill(c.cache, c.decoded(dev))
        now = time.perf_counter()
        for r in reqs:
            r.first_token_at = now
        self.stats.batch_first_tokens += len(reqs)
        self._sample_and_retire(new, logits, outs)
        open_cohort = {c.key: c for c in self.running if c.can_extend}
        for c in new:
            if not c.reqs:
                continue
            target = open_cohort.get(c.key) if c.reqs[0].mergeable else None
            if target is not None:
                target.absorb(c)
            else:
                self.running.append(c)
                if c.can_extend:
                    open_cohort[c.key] = c

    def _sample_and_retire(self, cohorts: list[Cohort], logits: torch.Tensor, outs: list[RequestOutput]) -> None:
        """Sample one token per row, record it, and drop the rows that finished from their caches."""
        reqs = [r for c in cohorts for r in c.reqs]
        tok = sample_rows(apply_penalties(logits, reqs), reqs)
        lps = token_logprobs(logits, reqs, tok)  # the model's own distribution
        toks = tok.tolist()  # one conversion, not one per row
        live = cohorts if cohorts is self.running else [*self.running, *cohorts]
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, sum(c.cache.nbytes() for c in live))
        max_pos = self.config.max_position_embeddings
        row = 0
        for c in cohorts:
            keep = []
            for i, r in enumerate(c.reqs):
                t = toks[row]
                n0 = len(r.stop.tokens)
                r.stop.push(t)
                new_tokens = r.stop.tokens[n0:]
                if new_tokens and lps[row] is not None:
                    r.logprobs.append(lps[row])
                if not r.stop.done and r.next_position >= max_pos:
                    r.stop.finish("length")
                out = RequestOutput(r.id, new_tokens, r.stop.stream_delta(), sampled=t,
                                    logprobs=[lps[row]] if new_tokens and lps[row] is not None else None)
                if r.stop.done:
                    self._finish(r, out)
                else:
                    r.last_token = t
                    keep.append(i)
                outs.append(out)
                row += 1
            c.retire(keep)
        self.running = [c for c in self.running if c.reqs]

    def _finish(self, r: Request, out: RequestOutput) -> None:
        r.finished_at = time.perf_counter()
        out.finished, out.finish_reason = True, r.stop.reason
        out.completion = Completion(r.prompt_ids, r.stop.tokens, r.stop.text(), r.stop.reason, r.logprobs, r.index)
        self.stats.generated_tokens += len(r.stop.tokens)
