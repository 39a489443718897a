"""ggzip: shrink quantized LLMs below 8 bits and still run them in llama.cpp.

Pipeline steps, one subpackage each: ``codec`` (native rANS), ``container``
(ggzip GGUF files), ``quantize`` / ``convert`` (compression-aware 8-bit
quantization), ``schedule`` (which layers stay compressed), ``run``
(llama.cpp / llama-cpp-python).
"""
__version__ = "0.1.0"


def __getattr__(name):
    # ggzip.Llama without importing llama_cpp for users who only convert
    if name == "Llama":
        from .run.llama import Llama
        return Llama
    raise AttributeError(f"module 'ggzip' has no attribute {name!r}")
