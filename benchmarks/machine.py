"""One line naming the machine a benchmark ran on: the CPU (with family / model, since cloud VMs often
report just "AMD EPYC") and its widest int8 ISA, torch's thread count, or the GPU."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def describe(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "unknown CPU"
    flags = set(info.get("flags", "").split())
    isa = next((f for f in ("amx_int8", "avx512_vnni", "avx_vnni", "avx2") if f in flags), "no AVX2")
    fam = f"family {info['cpu family']} model {info['model']}, " if "cpu family" in info else ""
    return f"{name} ({fam}{isa}), {torch.get_num_threads()} threads"
