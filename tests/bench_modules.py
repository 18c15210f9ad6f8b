"""Import a script of `benchmarks/` as a module in a test (the folder is not a package)."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/<name>.py as module `name`, registered in sys.modules (dataclasses and pickling need it);
    benchmarks/ goes on sys.path first, for the scripts' own `from machine import ...`."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
