#!/usr/bin/env bash
# Prints eoi's performance ratios on this machine, every figure measured in this one run:
#   1. one 2048 x 2048 layer at d = 0.1, and 100 layers of 128 x 128 at d = 0.125: the whole
#      `eoi generate` process against the reference implementation's in-process time
#      (goals: at least 1000x and 100x faster);
#   2. one 4096 x 4096 layer at d = 0.5 written as f32 + BOOL mask, against
#      `dd if=/dev/zero bs=1M` writing the same number of bytes to the same directory
#      (goal: at most 3x).
#
# The reference is the paper's code (github.com/woocash2/sparser-better-deeper-stronger,
# orthogonal/ortho.py). Set EOI_REFERENCE to a checkout of it and EOI_REFERENCE_PYTHON to a
# Python with torch and numpy to time it here; otherwise the script uses the figures measured
# on the project's CI machine (25 s and 0.95 s) and says so.
#
# Usage: benches/ratios.sh [runs]      (default 10 runs per measurement; uses hyperfine if
#                                       installed, else the best of the runs by `date`)
# Environment: EOI, a binary to measure instead of this checkout's release build (to compare
# two versions on the same machine in the same minutes).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
runs="${1:-10}"
if [[ -n "${EOI:-}" ]]; then
    eoi="$EOI"
else
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
    eoi="$repo/target/release/eoi"
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/eoi-ratios.XXXXXX")"
trap 'rm -rf "$work"' EXIT

layer() { # name rows cols density [repeat]
    local repeat=""
    [[ -n "${5:-}" ]] && repeat="repeat = $5"
    printf '[sparsity]\ndensity = %s\n[[layer]]\nname = "%s"\nshape = [%s, %s]\n%s\n' "$4" "$1" "$2" "$3" "$repeat"
}
layer "w" 2048 2048 0.1 >"$work/l2048.toml"
layer "l.{i}.weight" 128 128 0.125 100 >"$work/l128x100.toml"
layer "w" 4096 4096 0.5 >"$work/l4096.toml"

# seconds COMMAND...: mean wall time of the command over $runs runs, removing outputs first.
seconds() {
    if command -v hyperfine >/dev/null 2>&1; then
        hyperfine -N --warmup 2 --runs "$runs" --prepare "rm -rf $work/out" \
            --export-json "$work/h.json" "$*" >/dev/null 2>&1
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' "$work/h.json"
    else
        local best=""
        for _ in $(seq "$runs"); do
            rm -rf "$work/out"
            local start end
            start=$(date +%s%N)
            "$@" >/dev/null 2>&1
            end=$(date +%s%N)
            local t=$(((end - start) / 1000))
            if [[ -z "$best" || $t -lt $best ]]; then best=$t; fi
        done
        python3 -c "print($best / 1e6)"
    fi
}

reference() { # rows cols density layers
    if [[ -n "${EOI_REFERENCE:-}" && -n "${EOI_REFERENCE_PYTHON:-}" ]]; then
        "$EOI_REFERENCE_PYTHON" - "$EOI_REFERENCE" "$@" <<'PY' 2>/dev/null | tail -1
import sys, time, io, contextlib
sys.path.insert(0, sys.argv[1])
from orthogonal.ortho import orthogonal_with_density
rows, cols, density, layers = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    for _ in range(layers):
        orthogonal_with_density(rows, cols, density)
print(time.perf_counter() - start)
PY
    else
        echo "$5"
    fi
}
if [[ -n "${EOI_REFERENCE:-}" && -n "${EOI_REFERENCE_PYTHON:-}" ]]; then
    source_note="reference timed here ($EOI_REFERENCE)"
else
    source_note="reference figures from the CI machine (set EOI_REFERENCE and EOI_REFERENCE_PYTHON to time it here)"
fi

t2048=$(seconds "$eoi" generate "$work/l2048.toml" -o "$work/out" -q)
r2048=$(reference 2048 2048 0.1 1 25.0)
t128=$(seconds "$eoi" generate "$work/l128x100.toml" -o "$work/out" -q)
r128=$(reference 128 128 0.125 100 0.95)
t4096=$(seconds "$eoi" generate "$work/l4096.toml" -o "$work/out" -q)
"$eoi" generate "$work/l4096.toml" -o "$work/size.safetensors" -q
bytes=$(stat -c %s "$work/size.safetensors")
rm -f "$work/size.safetensors"
tdd=$(seconds dd if=/dev/zero of="$work/out" bs=1M count=$(((bytes + 1048575) / 1048576)))

python3 - "$t2048" "$r2048" "$t128" "$r128" "$t4096" "$tdd" "$bytes" "$source_note" <<'PY'
import sys
t2048, r2048, t128, r128, t4096, tdd = map(float, sys.argv[1:7])
size, note = int(sys.argv[7]), sys.argv[8]
rows = [
    ("2048x2048 d=0.1 vs reference", f"{t2048*1e3:.1f} ms vs {r2048:.2f} s", r2048 / t2048, ">= 1000x faster", r2048 / t2048 >= 1000),
    ("100 x 128x128 d=0.125 vs reference", f"{t128*1e3:.1f} ms vs {r128:.2f} s", r128 / t128, ">= 100x faster", r128 / t128 >= 100),
    (f"4096x4096 d=0.5 vs dd ({size/1e6:.0f} MB)", f"{t4096*1e3:.1f} ms vs {tdd*1e3:.1f} ms", t4096 / tdd, "<= 3x the time", t4096 / tdd <= 3),
]
print(f"{'measurement':<40} {'times':<28} {'ratio':>9}  goal")
for name, times, ratio, goal, ok in rows:
    print(f"{name:<40} {times:<28} {ratio:>8.1f}x  {goal} {'ok' if ok else 'MISSED'}")
print(f"({note})")
PY
