"""What the distributed GPU checks (dist.py, comet.py) share: choosing the device (a skip line and exit 0
without CUDA, which scripts/gpu_check.sh reports as SKIP), the relative error, the timing loop, and the
end: the PASS / FAIL line gpu_check.sh reads, the JSON result file, the exit status."""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import triton

from tessera.distributed import waits


def open_device(label: str, device: str) -> tuple[torch.device, str, int]:
    """(device, its name, SMs: the programs that can be resident at once), or exit: 0 with a skip line when
    CUDA was asked for and is missing, 1 when the interpreter would run instead of the compiler."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"{label} GPU check: no CUDA device, skipped")
        sys.exit(0)
    if dev.type == "cuda" and waits.interpreted():
        print(f"{label} GPU check: unset TRITON_INTERPRET to compile for the GPU")
        sys.exit(1)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (interpreter)"
    sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 10**6
    return dev, name, sms


def rel(x, y) -> float:
    """max |x - y| / max |y| (0 for empty tensors)."""
    if not y.numel():
        return 0.0
    return ((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1e-30)).item()


def bench(fn, dev, reps: int) -> float:
    """Seconds per call: triton's do_bench on CUDA, a plain loop elsewhere."""
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        if hasattr(triton, "testing"):
            return triton.testing.do_bench(fn, warmup=25, rep=reps * 10) * 1e-3
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def finish(label: str, device_name: str, res: dict, t0: float, out: str | None) -> int:
    res["seconds"] = time.time() - t0
    print(f"{label} GPU check on {device_name} (torch {torch.__version__}, triton {triton.__version__}): "
          f"{'PASS' if res['ok'] else 'FAIL'} in {res['seconds']:.1f}s")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["ok"] else 1
