"""The end every distributed GPU check shares: the PASS / FAIL line scripts/gpu_check.sh reads, the JSON
result file, the exit status."""

from __future__ import annotations

import json
import os
import time

import torch
import triton


def finish(label: str, device_name: str, res: dict, t0: float, out: str | None) -> int:
    res["seconds"] = time.time() - t0
    print(f"{label} GPU check on {device_name} (torch {torch.__version__}, triton {triton.__version__}): "
          f"{'PASS' if res['ok'] else 'FAIL'} in {res['seconds']:.1f}s")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["ok"] else 1
