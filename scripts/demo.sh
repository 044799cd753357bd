#!/usr/bin/env bash
# `make demo`: the whole toolchain on a built-in tiny MiniCPM, each step shown. Offline: the model
# trains on the documentation topics every Python install ships, and is measured on a held-out part.
set -euo pipefail
D=${1:-demo}
# D is replaced only when an earlier demo made it (its marker file): never a user's folder, `.` or $HOME
if [[ -e $D && ! -f $D/.minicpm-demo ]]; then
  echo "demo: $D exists and is not an earlier demo output; name another folder (make demo DEMO=path)" >&2
  exit 2
fi
rm -rf "$D" && mkdir -p "$D" && touch "$D/.minicpm-demo"
show() {  # the command as one would type it: arguments with spaces or ? in quotes
  local arg line=""
  for arg in "$@"; do [[ $arg == *[[:space:]?]* ]] && arg="\"$arg\""; line+=" $arg"; done
  printf '$%s\n' "$line"
}
step() { printf '\n\033[1m== %s\033[0m\n' "$1"; show "${@:2}"; "${@:2}"; }
also() { show "$@"; "$@"; }

python - "$D" <<'PY'
import sys
from pathlib import Path
from converters.tiny import stdlib_text
text = stdlib_text()
cut = int(len(text) * 0.9)
Path(sys.argv[1], "train.txt").write_text(text[:cut], encoding="utf-8")
Path(sys.argv[1], "heldout.txt").write_text(text[cut:], encoding="utf-8")
PY

step "1. a tiny MiniCPM in the published layout, trained briefly on Python's own docs" \
  python scripts/make_tiny_minicpm.py "$D/tiny-minicpm" --train-steps 300 --text "$D/train.txt"
step "2. what it is" minicpm inspect "$D/tiny-minicpm"
step "3. fold muP into a plain Llama" minicpm convert "$D/tiny-minicpm" --to llama -o "$D/tiny-llama"
step "4. GGUF for llama.cpp (f32 and q8_0)" minicpm convert "$D/tiny-minicpm" --to gguf --outtype f32 -o "$D/tiny-f32.gguf"
also minicpm convert "$D/tiny-minicpm" --to gguf --outtype q8_0 -o "$D/tiny-q8_0.gguf"
step "5. AWQ 4-bit on the CPU (llm-compressor, compressed-tensors)" \
  minicpm quantize "$D/tiny-minicpm" --method awq --bits 4 --calib "$D/train.txt" --num-samples 64 --seq-len 256 -o "$D/tiny-awq4"
step "6. perplexity, memory and speed side by side" \
  minicpm eval-ppl "$D/tiny-minicpm" "$D/tiny-llama" "$D/tiny-f32.gguf" "$D/tiny-q8_0.gguf" "$D/tiny-awq4" \
  --dataset "$D/heldout.txt" --ctx 256 --plot "$D/ppl.png" --json "$D/ppl.json"
step "7. a one-shot chat reply (greedy; a 4M-parameter model that read Python's docs babbles in their style)" \
  minicpm chat "$D/tiny-q8_0.gguf" --prompt "What does the return statement do?" --temperature 0 --repetition-penalty 1.3 --max-new-tokens 48
printf '\nAll outputs are in %s/ (plot: %s/ppl.png).\n' "$D" "$D"
