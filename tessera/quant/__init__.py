"""Weight quantization and the int8 / int4 module swap."""

from tessera.quant.fuse import fuse_projections
from tessera.quant.linear import Int4Linear, Int8Linear
from tessera.quant.swap import SCHEMES, quantize_model, quantize_state_dict, swap_linears
from tessera.quant.weights import quantize_weight_int4, quantize_weight_int8

__all__ = [
    "SCHEMES",
    "Int4Linear",
    "Int8Linear",
    "fuse_projections",
    "quantize_model",
    "quantize_state_dict",
    "quantize_weight_int4",
    "quantize_weight_int8",
    "swap_linears",
]
