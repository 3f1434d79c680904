#!/usr/bin/env bash
# Train a preset on tinyshakespeare (first 90% of characters) for a wall-clock budget and score
# the held-out last 10% with `tinylm eval --text`. Usage:
#   bench/shakespeare_char.sh [BUDGET_SECONDS] [PRESET] [extra `tinylm train` args...]
# TINYLM_SHARED_DATA points at the shared corpora (default: ../shared/data beside the repo).
set -euo pipefail
budget=${1:-150}; preset=${2:-shakespeare-char}; shift $(( $# < 2 ? $# : 2 ))
root=$(cd "$(dirname "$0")/.." && pwd)
data=${TINYLM_SHARED_DATA:-$root/../shared/data}/tinyshakespeare/input.txt
work=${BENCH_WORK:-$(mktemp -d)}
mkdir -p "$work"
python - "$data" "$work/heldout.txt" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
open(sys.argv[2], "w", encoding="utf-8").write(text[int(len(text) * 0.9):])
PY
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name:[ \t]*//p' | head -1), torch $(python -c 'import torch; print(torch.__version__)')"
tinylm train --preset "$preset" --text "$data" --out "$work/run" --overwrite --time-budget "$budget" "$@"
tinylm eval "$work/run" --text "$work/heldout.txt" --json
tinylm sample "$work/run" --prompt "ROMEO:" --max-new-tokens 300 --seed 1
