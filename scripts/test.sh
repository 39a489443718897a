#!/usr/bin/env bash
# The test command of the README: sets up what is missing, then runs the whole
# suite (Python tests, the C tests under sanitizers, the fuzzer, the NEON kernel
# under qemu, llama.cpp end to end).  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m pytest -ra "$@"
