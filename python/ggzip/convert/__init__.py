"""ggzip convert: float GGUF -> rescaled, pruned, entropy-aware Q8_0 GGUF."""
from .convert import ConvertReport, GGUFModel, convert, quantize_tensor

__all__ = ["ConvertReport", "GGUFModel", "convert", "quantize_tensor"]
