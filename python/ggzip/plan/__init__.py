"""Run a model in less memory: which ggzip frames stay compressed in RAM.

measure   one timed load in a fresh llama-cpp-python process (speed, peak RSS)
plan      calibrate this file on this device and choose the kept tensors for a
          memory budget; the SPEC of the ggzip.keep override
commands  `ggzip plan`
"""
from .measure import DEFAULT_CTX, Measurement, measure

__all__ = ["DEFAULT_CTX", "Measurement", "measure"]
