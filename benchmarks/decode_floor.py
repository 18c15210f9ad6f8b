"""How fast could a decode step be? The GEMM floor beside Tessera's and transformers' decode steps, one run.

A decode step of a model this small (4 layers, hidden 256) is a few dozen small GEMMs plus everything else
(norms, RoPE, the KV cache, attention, routing, sampling, Python). The GEMMs are the part no fp32
implementation can skip: the same weights times the same number of rows. This script records, during one
real Tessera decode step, every GEMM the step runs (each `nn.Linear` with its row count; for MoE layers each
non-empty expert's gate/up and down GEMMs with its row count) and replays exactly those GEMMs, in the
model's order and with the model's weights, as bare `torch.mm` calls on random rows. Their time is the
floor; transformers' step time divided by it is the largest speed-up over transformers that any
implementation running these GEMMs (fp32, this BLAS, this core) can reach.

Step times are per decode step without prefill: (wall time of N new tokens - wall time of 1) / (N - 1),
median over repeats, Tessera and transformers alternating in the same run, greedy, EOS ignored.

    PYTHONPATH=. python benchmarks/decode_floor.py --model dense --batch-sizes 1,8
    PYTHONPATH=. python benchmarks/decode_floor.py --model moe --batch-sizes 1,8,32
Writes benchmarks/results/decode_floor_cpu.{json,md} (one file, a section per model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch
from machine import describe


def record_gemms(llm, prompts) -> list[tuple[torch.Tensor, int]]:
    """(weight [out, in], rows) of every GEMM of one decode step, in execution order."""
    from tessera.config import SamplingParams
    from tessera.layers.moe import MoEBlock

    model, log, armed = llm.model, [], [False]
    hooks = []

    def linear_hook(m, inp, out):  # returns None: the output stays as it is
        if armed[0]:
            log.append((m.weight, inp[0].numel() // inp[0].shape[-1]))

    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, MoEBlock):
            def moe_hook(m, inp, out):  # each non-empty expert: gate/up GEMM, then down GEMM
                if not armed[0]:
                    return
                x = inp[0].reshape(-1, inp[0].shape[-1])
                armed[0] = False  # the router's own linear was recorded when the block ran it
                _, _, ids = m.gate(x)  # [T, k]
                armed[0] = True
                counts = torch.bincount(ids.flatten()[ids.flatten() >= 0], minlength=m.experts.gate_up_proj.shape[0])
                for e, n in enumerate(counts.tolist()):
                    if n:
                        log.append((m.experts.gate_up_proj[e], n))
                        log.append((m.experts.down_proj[e], n))
            hooks.append(mod.register_forward_hook(moe_hook))
    eng = llm.engine()
    for p in prompts:
        eng.add_request(llm.encode(p)[0], SamplingParams(max_new_tokens=4, ignore_eos=True))
    eng.step()  # prefill and the first token
    armed[0] = True
    eng.step()  # one decode step, recorded
    armed[0] = False
    for h in hooks:
        h.remove()
    while eng.has_unfinished():
        eng.step()
    return log


def replay(gemms, reps: int) -> list[float]:
    """Seconds of the recorded GEMMs as bare mm calls, per repetition."""
    xs = [torch.randn(n, w.shape[1]) for w, n in gemms]
    wts = [w.detach().t() for w, _ in gemms]  # [in, out] views, as F.linear multiplies
    times = []
    with torch.inference_mode():
        for _ in range(reps):
            t0 = time.perf_counter()
            for x, w in zip(xs, wts):
                torch.mm(x, w)
            times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dense", help="'dense', 'moe' or an HF dir")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "decode_floor_cpu"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tessera.config import SamplingParams
    from tessera.engine import LLM
    from tessera.engine.engine import resolve_model_path
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

    path = resolve_model_path(args.model)
    llm = LLM.load(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    load0 = os.getloadavg()[0]
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = [make_problem(EVAL_SEED_BASE + 900_000 + i, difficulty=8).prompt for i in range(bs)]
        enc = tok(prompts, return_tensors="pt", padding=True)

        def ours(n, prompts=prompts):
            llm.generate(prompts, SamplingParams(max_new_tokens=n, ignore_eos=True))

        def theirs(n, enc=enc):
            with torch.inference_mode():
                hf.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)

        N = args.new_tokens
        step = {"tessera": [], "transformers": []}
        for fn in (ours, theirs):
            fn(N)  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("tessera", ours), ("transformers", theirs)):
                t0 = time.perf_counter()
                fn(1)
                t1 = time.perf_counter()
                fn(N)
                t2 = time.perf_counter()
                step[name].append(((t2 - t1) - (t1 - t0)) / (N - 1))
        gemms = record_gemms(llm, prompts)
        floor = replay(gemms, reps=max(50, 20 * args.repeats))
        r = {"batch": bs, "gemms_per_step": len(gemms),
             "gemm_flops_per_step": sum(2 * n * w.numel() for w, n in gemms),
             "gemm_weight_bytes_per_step": sum(w.numel() * w.element_size() for w, _ in gemms),
             "floor_ms": statistics.median(floor) * 1e3, "floor_spread_ms": [min(floor) * 1e3, max(floor) * 1e3]}
        for name, ts in step.items():
            r[f"{name}_step_ms"] = statistics.median(ts) * 1e3
            r[f"{name}_spread_ms"] = [min(ts) * 1e3, max(ts) * 1e3]
        r["tessera_vs_transformers"] = r["transformers_step_ms"] / r["tessera_step_ms"]
        r["ceiling_vs_transformers"] = r["transformers_step_ms"] / r["floor_ms"]
        r["tessera_gemm_share"] = r["floor_ms"] / r["tessera_step_ms"]
        rows.append(r)
        print(f"batch {bs}: tessera {r['tessera_step_ms']:.2f} ms, transformers {r['transformers_step_ms']:.2f} ms "
              f"({r['tessera_vs_transformers']:.2f}x), GEMM floor {r['floor_ms']:.2f} ms (ceiling "
              f"{r['ceiling_vs_transformers']:.2f}x)", flush=True)
    doc = {"machine": describe(), "model": str(path), "threads": args.threads, "torch": torch.__version__,
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_start": load0,
           "loadavg_end": os.getloadavg()[0], "new_tokens": args.new_tokens, "repeats": args.repeats, "rows": rows}
    write(args.out, os.path.basename(str(path).rstrip("/")), doc)


def write(out: str, key: str, doc: dict) -> None:
    """One JSON with a section per model (a rerun of one model replaces its section) and its Markdown."""
    path = out + ".json"
    allres = json.load(open(path)) if os.path.exists(path) else {}
    allres[key] = doc
    with open(path, "w") as fh:
        json.dump(allres, fh, indent=2)
        fh.write("\n")
    L = ["# The GEMM floor of a decode step, beside Tessera and transformers", "",
         "`benchmarks/decode_floor.py`: per decode step (prefill excluded), fp32, greedy. `floor` replays the "
         "GEMMs one real Tessera decode step ran (every linear with its rows, every non-empty expert's two "
         "GEMMs), in order, with the model's weights, as bare `torch.mm` calls: no fp32 implementation that "
         "runs these GEMMs on this BLAS and core can be faster. `ceiling` = transformers' step / floor: the "
         "largest speed-up over transformers within reach without changing the arithmetic (dtype, "
         "quantization) or the GEMM library.", ""]
    for key, d in allres.items():
        L += [f"## {key}", "", f"{d['machine']} (torch's), torch {d['torch']}, {d['when']}, "
              f"load average {d['loadavg_start']:.1f} at start and {d['loadavg_end']:.1f} at end; "
              f"{d['new_tokens']} new tokens, median of {d['repeats']} repeats (min-max in brackets).", "",
              "| batch | GEMMs / step | GEMM MFLOP / step | weights MB / step | floor ms | Tessera ms | "
              "transformers ms | Tessera vs transformers | ceiling vs transformers | floor / Tessera |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in d["rows"]:
            L.append(f"| {r['batch']} | {r['gemms_per_step']} | {r['gemm_flops_per_step'] / 1e6:.1f} | "
                     f"{r['gemm_weight_bytes_per_step'] / 1e6:.1f} | {r['floor_ms']:.2f} | "
                     f"{r['tessera_step_ms']:.2f} [{r['tessera_spread_ms'][0]:.2f}-{r['tessera_spread_ms'][1]:.2f}] | "
                     f"{r['transformers_step_ms']:.2f} [{r['transformers_spread_ms'][0]:.2f}-"
                     f"{r['transformers_spread_ms'][1]:.2f}] | {r['tessera_vs_transformers']:.2f}x | "
                     f"{r['ceiling_vs_transformers']:.2f}x | {r['tessera_gemm_share']:.0%} |")
        L.append("")
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(L))
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
