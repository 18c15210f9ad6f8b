"""Generate the C translation unit of one schedule: W8A8 and W4A8 micro-kernels, drivers, quantizers.

This is NGEMM's "compiler-based" idea (Bao et al., arXiv 1910.00178; ONNX Runtime Nuphar
`intrin_gemm_8bit.cc`) without TVM: Python emits fully unrolled micro-kernels for one schedule
(`schedule.py`: tiles, k unroll, prefetch distances, ISA) and gcc compiles them (`ccache.py`).

Where the C comes from:
- fixed C lives in `csrc/*.c`: prelude, quantizers, drivers, AMX kernels, fused entry points;
- the micro-kernels are emitted line by line by `emit_w8.py` and `emit_w4.py`, from the ISA
  vocabulary of `isa_ops.py`.
One templating convention throughout: every C text with holes (the `csrc` files, the driver
fragments below, the intrinsic patterns) is a `string.Template` with `${NAME}` placeholders, which
leaves C's braces alone; Python that computes lines (unrolled loops) writes them with f-strings.
"""

from __future__ import annotations

import functools
from importlib import resources
from string import Template

from tessera.kernels.ngemm import w8_kernel
from tessera.kernels.ngemm.emit_w4 import w4_microkernel
from tessera.kernels.ngemm.emit_w8 import w8_microkernel
from tessera.kernels.ngemm.isa_ops import ISA_OPS
from tessera.kernels.ngemm.layout import PANEL
from tessera.kernels.ngemm.schedule import Schedule


@functools.cache
def c_template(name: str) -> Template:
    """`csrc/<name>` (package data) as a Template."""
    return Template(resources.files(__package__).joinpath("csrc", name).read_text())


def _fill(text: str, values: dict) -> str:
    return Template(text).substitute(values)


def _switch(name: str, mr_max: int, args: str) -> str:
    """Dispatch on the rows left (`mr`) to the micro-kernel of that many rows."""
    cases = " ".join(f"case {m}: {name}{m}({args}); break;" for m in range(1, mr_max + 1))
    return f"switch (mr) {{ {cases} }}"


_W8_ARGS = ("const uint8_t* A, const float* sa, const int8_t* B, const int32_t* colsum, const float* sw, "
            "const float* bias, void* out, int out_bf16, int32_t* raw, long M, long N, long Kp, int nt")
# raw != NULL: store the corrected int32 sums instead of the scaled outputs (tests read the integer core)
_W8_EPILOGUE = ("const int32_t v = acc[i * ${NR} + j]${CORRECTION};\n"
                "        if (raw) { raw[idx] = v; continue; }\n"
                "        float y = (float)v * (sa[m0 + i] * sw[n]);")


def _driver(s: Schedule, kind: str) -> str:
    """`tq_w8a8`, `tq_w8a8_s` (kind "w8s": the AVX2 sign-trick kernels, whose product is already a * w,
    so no colsum term) or `tq_w4a8` (kind "w4"): csrc/driver.c around this kind's micro-kernels."""
    w8, sign = kind in ("w8", "w8s"), kind == "w8s"
    values = {"MR": s.w8.mr if w8 else s.w4.mr, "NR": s.w8.nr if w8 else s.w4.tile_cols,
              "ACC_T": "int32_t" if w8 else "float", "KDIM": "Kp" if w8 else "K",
              "CORRECTION": "" if sign else " - 128 * colsum[n]"}
    if w8:
        parts = {"SIGNATURE": f"void tq_w8a8{'_s' if sign else ''}({_W8_ARGS}) {{",
                 "SIZES": "const long nk = Kp / 4, kstride = Kp * PANEL;",
                 "PANEL_PTRS": "const int8_t* bp = B + p * kstride + sub * ${NR} * 4;",
                 "CALL": _switch(f"{kind}_mk", values["MR"], "A + m0 * Kp, Kp, bp, nk, acc"),
                 "EPILOGUE": _W8_EPILOGUE}
    else:
        parts = {"SIGNATURE": ("void tq_w4a8(const int8_t* A, const float* sa, const int32_t* gsum, "
                               "const uint8_t* B, const float* sw, const float* bias, void* out, int out_bf16, "
                               "long M, long N, long K, long group, int nt) {"),
                 "SIZES": "const long ng = K / group, spg = group / 8, kstride = (K / 8) * PANEL * 4;",
                 "PANEL_PTRS": ("const uint8_t* bp = B + p * kstride + sub * ${NR} * 4; "
                                "const float* swp = sw + p * ng * PANEL + sub * ${NR};"),
                 "CALL": _switch("w4_mk", values["MR"],
                                 "A + m0 * K, K, bp, swp, gsum + m0 * ng, ng, spg, acc"),
                 "EPILOGUE": "float y = acc[i * ${NR} + j] * sa[m0 + i];"}
    return c_template("driver.c").substitute(values, **{k: _fill(v, values) for k, v in parts.items()})


def _fused(s: Schedule) -> str:
    """csrc/fused.c: the entry points the host calls, with the W8A8 kernel choices this schedule has."""
    tail = "(q, sa, B, colsum, sw, bias, out, out_bf16, NULL, M, N, Kp, nt)"
    amx_call = f"(kernel == TQ_W8_AMX16 ? tq_w8a8_amx16 : tq_w8a8_amx){tail}" if s.amx else "(void)0"
    sign_call = f"tq_w8a8_s{tail}" if s.sign_kernels else "(void)0"
    return c_template("fused.c").substitute(W8_KERNEL_ENUM=w8_kernel.c_enum(), AMX_CALL=amx_call,
                                            SIGN_CALL=sign_call)


def generate(s: Schedule) -> str:
    """Complete C translation unit: quantizers, W8A8 and W4A8 micro-kernels and drivers, entry points."""
    parts = [c_template("prelude.c").substitute(PANEL=PANEL)]
    parts += [c_template("quantize.c").substitute(T=t, CT=ct)
              for t, ct in (("f32", "float"), ("bf16", "uint16_t"))]
    parts += [w8_microkernel(s, m) for m in range(1, s.w8.mr + 1)]
    parts += [w4_microkernel(s, m) for m in range(1, s.w4.mr + 1)]
    parts += [_driver(s, "w8"), _driver(s, "w4")]
    if s.sign_kernels:
        parts += [w8_microkernel(s, m, sign=True) for m in range(1, s.w8.mr + 1)]
        parts.append(_driver(s, "w8s"))
    if s.amx:
        parts.append(c_template("amx.c").substitute(AMX_PF=s.amx.prefetch))
    parts.append(_fused(s))
    return "\n".join(parts)


def flags(s: Schedule) -> tuple[str, ...]:
    return ISA_OPS[s.isa].flags
