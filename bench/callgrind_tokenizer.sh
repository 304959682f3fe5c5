#!/usr/bin/env bash
# Instructions per byte of one parser on one corpus file, under valgrind's callgrind: steadier
# than wall-clock times on a shared machine.
#
#   bench/callgrind_tokenizer.sh [PARSER] [FILE]
#   PARSER: ours-routing (default), ours-tree, pyexpat-split, pyexpat-tree, etree-pull, lxml-pull
#   FILE:   default bench/out/corpus-0.05/mixed.xml (generated on first use, ~2.5 MB)
#
# Runs `bench_tokenizer.py --once PARSER FILE` and `--once none FILE` (same start-up, file read
# and 4 KiB cutting, no parsing) and divides the difference in instructions (Ir) by the size.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONHASHSEED=0  # deterministic dict/str hashing: repeatable instruction counts
PARSER=${1:-ours-routing}
FILE=${2:-bench/out/corpus-0.05/mixed.xml}
if [ ! -f "$FILE" ]; then
  "$PY" -c 'import sys; sys.path.insert(0, "bench"); import bench_tokenizer as b; b.ensure_corpus(0.05)'
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
ir() {
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$1.out" \
    "$PY" bench/bench_tokenizer.py --once "$1" "$FILE" >/dev/null 2>"$OUT/$1.log"
  awk '/^summary:/ {print $2}' "$OUT/$1.out"
}
BASE=$(ir none)
RUN=$(ir "$PARSER")
BYTES=$(stat -c %s "$FILE")
awk -v run="$RUN" -v base="$BASE" -v bytes="$BYTES" -v p="$PARSER" -v f="$FILE" 'BEGIN {
  printf "%s on %s: %d bytes, %.0f instructions for parsing, %.2f instructions/byte\n",
         p, f, bytes, run - base, (run - base) / bytes
}'
