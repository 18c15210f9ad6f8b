"""What the code generator is told: one schedule per ISA, with a part per kernel family.

    Schedule(isa, w8=W8Schedule(...), w4=W4Schedule(...), amx=AmxSchedule(...) or None)

A schedule fixes the micro-tile (rows x columns held in registers), the k unroll and the software
prefetch distance of each kernel family; `codegen.generate` turns it into C. This is the "schedule"
half of NGEMM's compiler-based approach (Bao et al., arXiv 1910.00178), as in TVM's schedules.
The measurements behind the default numbers are in docs/ngemm.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.kernels.ngemm.isa_ops import ISA_OPS
from tessera.kernels.ngemm.layout import PANEL


@dataclass(frozen=True)
class W8Schedule:
    """W8A8 micro-kernels: mr rows x nr columns of int32 accumulators (mr * nr / lanes registers)."""

    mr: int  # rows per micro-tile
    nr: int  # columns per micro-tile; divides PANEL
    k_unroll: int  # k-steps per loop iteration
    prefetch: int  # prefetch distance of the B stream, in k-steps (0: none)


@dataclass(frozen=True)
class W4Schedule:
    """W4A8 micro-kernels. Each row needs int, fp32 (and on AVX2 s16) accumulators, so a W4A8 micro-tile
    holds fewer columns in registers than a W8A8 one; `panel` lets it cover the panel anyway."""

    mr: int  # rows per micro-tile
    nr: int  # columns per register pass of a one-row micro-kernel; divides PANEL
    k_unroll: int  # unroll of the per-group k loop (AVX2 unrolls its s16 blocks instead)
    prefetch: int  # prefetch distance of the B stream, in k-steps (0: none)
    panel: bool = False  # one micro-kernel call covers the whole panel, in nr-column passes per group
    nr_rows: int | None = None  # pass width of micro-kernels of 2+ rows (None: nr); needs panel

    def pass_cols(self, mr: int) -> int:
        """Columns per register pass of an mr-row micro-kernel."""
        return self.nr_rows if mr > 1 and self.nr_rows is not None else self.nr

    @property
    def tile_cols(self) -> int:
        """Columns of one micro-kernel call."""
        return PANEL if self.panel else self.nr

    def __post_init__(self):
        if self.nr_rows is not None and not self.panel:
            raise ValueError("W4Schedule.nr_rows needs panel=True (each W4A8 micro-kernel then covers the panel)")


@dataclass(frozen=True)
class AmxSchedule:
    """AMX tiles for W8A8 from `min_m` rows on (the VNNI micro-kernels run below)."""

    min_m: int  # W8A8 calls with M >= this use AMX tiles (and Kp % 64 == 0)
    prefetch: int = 0  # prefetch the B block this many 64-k steps ahead (0: none)


@dataclass(frozen=True)
class Schedule:
    """Everything generated for one ISA: W8A8 and W4A8 micro-kernels, and AMX tiles for isa "amx"."""

    isa: str  # a key of ISA_OPS
    w8: W8Schedule
    w4: W4Schedule
    amx: AmxSchedule | None = None  # required for isa "amx", refused for the others

    @property
    def sign_kernels(self) -> bool:
        """Whether the AVX2 sign-trick W8A8 kernels are generated (see `emit_w8`); VNNI needs no trick."""
        return self.isa == "avx2"

    def __post_init__(self):
        if self.isa not in ISA_OPS:
            raise ValueError(f"unknown isa {self.isa!r}; choose one of {tuple(ISA_OPS)}")
        if (self.amx is not None) != (self.isa == "amx"):
            raise ValueError("an AmxSchedule goes with isa 'amx' and only with it")
        lanes = ISA_OPS[self.isa].lanes
        for name, nr in (("w8.nr", self.w8.nr), ("w4.nr", self.w4.nr), ("w4.nr_rows", self.w4.pass_cols(2))):
            if PANEL % nr or nr % lanes:
                raise ValueError(f"{name}={nr} must divide {PANEL} and be a multiple of {lanes} lanes")
        counts = (self.w8.mr, self.w8.k_unroll, self.w4.mr, self.w4.k_unroll)
        distances = (self.w8.prefetch, self.w4.prefetch, self.amx.prefetch if self.amx else 0)
        if min(counts) < 1 or min(distances) < 0 or (self.amx is not None and self.amx.min_m < 1):
            raise ValueError(f"bad schedule {self}")


# Register budget: zmm has 32 registers (6x4 W8A8 accumulators + 4 B + 1 A = 29), ymm 16.
DEFAULT_SCHEDULES = {
    # AMX: prefetch the next 4 KB B block, so that the tile loads find it in L1 (other distances and
    # the L2 hint were no better).
    "amx": Schedule("amx", w8=W8Schedule(mr=6, nr=64, k_unroll=4, prefetch=16),
                    w4=W4Schedule(mr=2, nr=64, k_unroll=4, prefetch=16),
                    amx=AmxSchedule(min_m=16, prefetch=1)),
    "avx512vnni": Schedule("avx512vnni", w8=W8Schedule(mr=6, nr=64, k_unroll=4, prefetch=16),
                           w4=W4Schedule(mr=2, nr=64, k_unroll=4, prefetch=16)),
    "avxvnni": Schedule("avxvnni", w8=W8Schedule(mr=2, nr=32, k_unroll=4, prefetch=16),
                        w4=W4Schedule(mr=1, nr=32, k_unroll=4, prefetch=16)),
    # AVX2: W8A8 runs one row against the whole 64-column panel, so the B stream is contiguous (256 B per
    # k-step; a narrower sub-panel reads a strided quarter of every panel row). W4A8 keeps int, s16 and fp32
    # accumulators: 32 columns of them fit the 16 registers, so it walks the panel in two 32-column passes
    # per group. It computes twice as long per byte as W8A8, so it wants its prefetches further ahead
    # (W8A8 does not: a longer distance slows it). From M = 2 W4A8 runs two rows per micro-tile in
    # 16-column passes, so that both rows use each unpacked B vector and row 0's DRAM stream overlaps
    # row 1's compute.
    "avx2": Schedule("avx2", w8=W8Schedule(mr=1, nr=64, k_unroll=1, prefetch=4),
                     w4=W4Schedule(mr=2, nr=32, k_unroll=1, prefetch=8, panel=True, nr_rows=16)),
}
