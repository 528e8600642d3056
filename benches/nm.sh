#!/usr/bin/env bash
# Prints the cost of N:M sparsity on this machine, both figures measured in this one run:
# generating specs/transformer-1.3b.toml (1.31B weights, 6.5 GB of f32 weights and BOOL
# masks) with every sparse layer at 2:4, against the same spec unstructured at d = 0.5
# (goal: at most 1.5x).
#
# Both variants are the bundled spec at density 0.5 with distribution "uniform" (the token
# embedding stays dense in both); the 2:4 one adds nm = "2:4" to [sparsity], which fixes every
# other layer at N/M = 0.5 (ERK would have no free layer left to spread over). The runs
# alternate (unstructured, 2:4, unstructured, ...), so a change of the machine's load hits
# both; each output is deleted as soon as it is timed.
#
# Usage: benches/nm.sh [runs]      (default 3 runs of each; the best of each is compared)
# Environment: EOI, a binary to measure instead of this checkout's release build; TMPDIR,
# where the 6.5 GB outputs go (one at a time).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
runs="${1:-3}"
if [[ -n "${EOI:-}" ]]; then
    eoi="$EOI"
else
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
    eoi="$repo/target/release/eoi"
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/eoi-nm.XXXXXX")"
trap 'rm -rf "$work"' EXIT

spec="$repo/specs/transformer-1.3b.toml"
sed -e 's/^density = 0.1$/density = 0.5/' -e 's/^distribution = "erk"$/distribution = "uniform"/' \
    "$spec" >"$work/unstructured.toml"
sed -e 's/^density = 0.5$/density = 0.5\nnm = "2:4"/' "$work/unstructured.toml" >"$work/nm.toml"
grep -q '^nm = "2:4"$' "$work/nm.toml" || { echo "benches/nm.sh: could not set the density of $spec" >&2; exit 1; }

# seconds SPEC: wall time of one `eoi generate SPEC`, its output removed afterwards.
seconds() {
    local start end
    start=$(date +%s%N)
    "$eoi" generate "$1" -o "$work/out.safetensors" -q
    end=$(date +%s%N)
    rm -f "$work/out.safetensors"
    python3 -c "print(($end - $start) / 1e9)"
}

"$eoi" plan "$work/nm.toml" | tail -2 | head -1
best_plain=""
best_nm=""
for run in $(seq "$runs"); do
    plain=$(seconds "$work/unstructured.toml")
    nm=$(seconds "$work/nm.toml")
    echo "run $run: unstructured d = 0.5 ${plain} s, 2:4 ${nm} s"
    best_plain=$(python3 -c "print(min(float(x) for x in '$plain $best_plain'.split()))")
    best_nm=$(python3 -c "print(min(float(x) for x in '$nm $best_nm'.split()))")
done
python3 -c "print(f'best of $runs: unstructured {float(\"$best_plain\"):.1f} s, 2:4 {float(\"$best_nm\"):.1f} s, ratio {float(\"$best_nm\") / float(\"$best_plain\"):.2f}x (goal: at most 1.5x)')"
