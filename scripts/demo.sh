#!/usr/bin/env bash
# `make demo`: the whole toolchain on a built-in tiny MiniCPM, each step shown.
set -euo pipefail
D=${1:-demo}
rm -rf "$D" && mkdir -p "$D"
step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "1. a tiny MiniCPM (published layout), trained briefly on Python's own docs" \
  python scripts/make_tiny_minicpm.py "$D/tiny-minicpm" --train-steps 300
step "2. fold muP into a plain Llama" \
  minicpm convert "$D/tiny-minicpm" --to llama -o "$D/tiny-llama"
