"""Which W8A8 kernels a call runs: the `kernel` argument of the C entry point `tq_w8a8_x`.

The generated C declares the same names (`enum tq_w8_kernel`, rendered by `c_enum` from this class,
so the two sides cannot drift apart).
"""

from __future__ import annotations

from enum import IntEnum


class W8Kernel(IntEnum):
    SIGN = -1  # the AVX2 sign-trick kernels, for weights without -128 (see `emit_w8`)
    VECTOR = 0  # the SIMD micro-kernels of the schedule's ISA
    AMX16 = 16  # AMX: one 16-row A tile against a whole panel (M <= 16)
    AMX32 = 32  # AMX: 32 x 32 output blocks

    @property
    def amx(self) -> bool:
        return self > 0  # the AMX members' values are their A block heights

    def a_rows(self, m: int) -> int:
        """Rows of the quantized activation buffer: the AMX kernels read whole blocks (pad rows are 0)."""
        return -(-m // self.value) * self.value if self.amx else m


def c_enum() -> str:
    """`enum tq_w8_kernel` with one `TQ_W8_<NAME>` constant per member."""
    return "enum tq_w8_kernel { " + ", ".join(f"TQ_W8_{k.name} = {k.value}" for k in W8Kernel) + " };"
