"""Compile generated C once with the system compiler, cache the shared library, load it via ctypes.

Why ctypes on a cached `.so` rather than a setuptools/torch C++ extension: the kernels are *generated*
from a schedule at run time (NGEMM's "compiler-based" idea, arXiv 1910.00178), so they cannot be
built at install time without fixing the schedule; a C ABI with raw pointers needs no Python headers,
no pybind11 and no torch ABI match, and gcc's start-up (~0.3 s per variant) is paid once per machine.

The cache key hashes source + flags + `cc --version` + the entry format, so a changed generator, flag set
or compiler never reuses a stale binary. The directory is `$TESSERA_KERNEL_CACHE` or ~/.cache/tessera/kernels.
Flags are explicit per ISA (`-mavx512vnni` ...): never `-march=native`, so a cached artifact does
not silently embed instructions of the machine that happened to build it.

An entry heals itself. Before it is loaded it is checked: a complete ELF file (its section table lies
within the file: a truncated copy fails), the version stamp compiled into it (the key, as a string in its
data) and every function the source defines, by name in its symbol table. A bad entry is a cache miss: it
is compiled again into a temporary file and moved over the old one (`os.replace`, atomic), so a process
that loads it at the same time sees the old file or the new one, never half of one, and two processes
that compile at once both end with a valid entry. Checking before `dlopen` matters: the loader keys
loaded libraries by path, so a bad file once loaded would shadow its replacement for the whole process.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

BASE_FLAGS = (
    "-O3", "-fPIC", "-shared", "-std=gnu11", "-fopenmp",
    # Bit-exact agreement with the torch fallback needs separate mul and add (no FMA contraction).
    "-ffp-contract=off", "-fno-math-errno",
)


#: bump when what an entry holds changes: old entries then miss instead of loading
CACHE_FORMAT = 2
STAMP_SYMBOL = "tessera_kernel_stamp"
_STAMP_PREFIX = "tessera-kernel-stamp:"


class CompileError(RuntimeError):
    pass


def cache_dir() -> Path:
    d = os.environ.get("TESSERA_KERNEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tessera", "kernels")
    return Path(d)


@functools.cache
def compiler() -> tuple[str, str] | None:
    """(path, version banner) of `$CC` or gcc/cc, or None when no C compiler works."""
    for name in filter(None, (os.environ.get("CC"), "gcc", "cc")):
        path = shutil.which(name)
        if not path:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return path, out.stdout.strip()
    return None


def exported_functions(source: str) -> list[str]:
    """Names of the non-static functions `source` defines (a prototype or a static helper is not one)."""
    names = []
    for m in re.finditer(r"^(?!static\b)[A-Za-z_][\w \t*]*?\b([A-Za-z_]\w*)\s*\(", source, re.M):
        depth, i = 1, m.end()
        while depth and i < len(source):  # skip the parameter list, then a body must follow
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        if source[i:].lstrip().startswith("{") and m.group(1) not in ("if", "for", "while", "switch", "return"):
            names.append(m.group(1))
    return names


def _elf_problem(data: bytes) -> str | None:
    """Why `data` is not a whole ELF64 little-endian shared object, or None."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return f"not an ELF file ({len(data)} bytes)"
    if data[4] != 2 or data[5] != 1:
        return None  # not ELF64-LE: leave the judgement to the loader
    shoff = int.from_bytes(data[0x28:0x30], "little")
    shentsize, shnum = (int.from_bytes(data[o:o + 2], "little") for o in (0x3A, 0x3C))
    if shoff + shentsize * shnum > len(data):
        return f"truncated: {len(data)} bytes, its section table ends at byte {shoff + shentsize * shnum}"
    return None


def entry_problem(path: Path, key: str, symbols: list[str]) -> str | None:
    """Why the cache entry at `path` must not be loaded (size, version stamp, symbols), or None when it may."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if sys.platform.startswith("linux"):
        why = _elf_problem(data)
        if why:
            return why
    if (_STAMP_PREFIX + key).encode() not in data:
        return "its version stamp is not this build's (an older format, or another source copied over it)"
    missing = [s for s in symbols if b"\0" + s.encode() + b"\0" not in data]
    if missing:
        return f"it lacks the symbols {missing}"
    return None


def entry_path(source: str, flags: tuple[str, ...], name: str) -> tuple[Path, str]:
    """(cache file, key) of `source` built with `flags` by this machine's compiler."""
    cc = compiler()
    all_flags = (*BASE_FLAGS, *flags)
    banner = cc[1] if cc else ""
    key = hashlib.sha256("\0".join((source, " ".join(all_flags), banner, str(CACHE_FORMAT))).encode()).hexdigest()[:20]
    return cache_dir() / f"{name}-{key}.so", key


def _compile(cc: tuple[str, str], flags: tuple[str, ...], source: str, name: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        out = Path(tmp) / "lib.so"
        res = subprocess.run([cc[0], *flags, str(src), "-o", str(out)], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise CompileError(f"{cc[0]} failed for {name}:\n{res.stderr[-4000:]}")
        os.replace(out, target)  # atomic: concurrent builders never load a half-written file


def build(source: str, flags: tuple[str, ...], name: str) -> ctypes.CDLL:
    """Return the loaded library for `source`, compiling it only on a cache miss (a missing or bad entry)."""
    cc = compiler()
    if cc is None:
        raise CompileError("no C compiler found (set CC or install gcc)")
    all_flags = (*BASE_FLAGS, *flags)
    target, key = entry_path(source, flags, name)
    symbols = exported_functions(source)
    stamped = (f"{source}\n/* the version stamp of the cache entry */\n"
               f'const char {STAMP_SYMBOL}[] = "{_STAMP_PREFIX}{key}";\n')
    why = entry_problem(target, key, symbols) if target.exists() else "missing"
    if why != "missing" and why is not None:
        warnings.warn(f"kernel cache entry {target} is unusable: {why}; compiling it again", stacklevel=2)
    if why is not None:
        _compile(cc, all_flags, stamped, name, target)
        why = entry_problem(target, key, symbols)
        if why is not None:  # another process may have replaced it meanwhile; its entry must pass too
            raise CompileError(f"{target} is unusable right after compiling it: {why}")
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as e:
        raise CompileError(f"{target} passed its checks but cannot be loaded: {e}") from None
    return lib
