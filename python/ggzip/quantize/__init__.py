"""Compression-aware 8-bit quantization: rescale (fold.py), prune (prune.py),
quantize to Q8_0 blocks with one entropy-friendly step per row (q8.py), driven by
activation statistics (stats.py)."""
from .fold import RescalePlan, SUPPORTED_ARCHS, plan_rescale, scales_from_stat
from .prune import prune_rows
from .q8 import (BLOCK_BYTES, DEFAULT_THETA, QK, QuantStats, measure, pack_q8_0,
                 quantize_rows, reference_step, row_absmax, row_steps, sample_rows,
                 scale_stream_bits, step_for_rate, symbol_entropy)
from .stats import load_imatrix

__all__ = ["RescalePlan", "SUPPORTED_ARCHS", "plan_rescale", "scales_from_stat",
           "prune_rows", "BLOCK_BYTES", "DEFAULT_THETA", "QK", "QuantStats", "measure",
           "pack_q8_0", "quantize_rows", "reference_step", "row_absmax", "row_steps",
           "sample_rows", "scale_stream_bits", "step_for_rate", "symbol_entropy",
           "load_imatrix"]
