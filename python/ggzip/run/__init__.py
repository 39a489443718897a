"""Run ggzip models in llama.cpp (the patched build of scripts/build_llama.sh)."""
from .llama import Llama, check_patched_llama_cpp  # noqa: F401
