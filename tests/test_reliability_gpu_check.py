"""scripts/gpu_check.sh reports a check that ran nothing as SKIP, never as PASS (fake checks, no GPU needed)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"

CHECKS = {  # name: (command, expected result)
    "pass": ("true", "PASS"),
    "fail": ("false", "FAIL (rc 1)"),
    "no-cuda": ("echo 'dist GPU check: no CUDA device, skipped'", "SKIP (dist GPU check: no CUDA device, skipped)"),
    "pytest-all-skipped": ("echo '4 skipped in 0.12s'", "SKIP (4 skipped)"),
    "pytest-some-skipped": ("echo '3 passed, 4 skipped, 2 warnings in 1.0s'", "PASS (4 skipped)"),
    "pytest-none-selected": ("echo 'no tests ran in 0.10s'; exit 5", "SKIP (no test selected)"),
    "pytest-failed": ("echo '1 failed, 2 skipped in 1.0s'; exit 1", "FAIL (rc 1)"),
    "exit-77": ("exit 77", "SKIP (exit 77)"),
    "missing-script": ("python3 scripts/gpu_checks/no_such_check.py", "SKIP (no scripts/gpu_checks/no_such_check.py)"),
}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_skipped_checks_are_skip_not_pass(tmp_path):
    spec = "\n".join(f"{name}|20|{cmd}" for name, (cmd, _) in CHECKS.items())
    env = dict(os.environ, GPU_CHECKS=spec, PYTHON="true", OUT=str(tmp_path))  # PYTHON=true: no version probe
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    md = next(tmp_path.glob("gpu_check_*.md")).read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| check")}
    assert rows == {name: want for name, (_, want) in CHECKS.items()}
