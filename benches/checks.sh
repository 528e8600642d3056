#!/usr/bin/env bash
# Times eoi's checks against the generate that wrote the file, and against numpy, every figure
# measured in this one run (wall time and peak RSS of the whole process, by /usr/bin/time):
#   1. a model (SPEC; default a 4-block slice of specs/transformer-1.3b.toml, 0.3B weights):
#      generate, verify and inspect of one safetensors file, then of the same tensors written
#      as a sharded directory (--max-shard-size 512MB); ratios to generate's time;
#   2. isometry of a linear chain (CHAIN_LAYERS layers of CHAIN_WIDTH x CHAIN_WIDTH at
#      d = 0.1; default 48 x 2048), against its generate;
#   3. one 2048 x 2048 layer of the model file: `eoi inspect --layers` (eigenvalues of the
#      Gram matrix; and --svd) against numpy in f64 on the same matrix, `A @ A.T` + `eigvalsh`
#      and `svd(compute_uv=False)`; and the accuracy of inspect's singular values against
#      numpy's SVD on that EOI layer and on a random dense one.
#
# Usage: benches/checks.sh [runs]      (default 3 runs per measurement; prints the range)
# Environment: SPEC (e.g. specs/transformer-1.3b.toml: 6.5 GB, written to TMPDIR and deleted
# after); EOI, a binary to measure instead of this checkout's release build; PYTHON, an
# interpreter with numpy and safetensors (default: the repo's .venv); CHAIN_LAYERS, CHAIN_WIDTH.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
runs="${1:-3}"
if [[ -n "${EOI:-}" ]]; then
    eoi="$EOI"
else
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
    eoi="$repo/target/release/eoi"
fi
python="${PYTHON:-$repo/.venv/bin/python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/eoi-checks.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if [[ -n "${SPEC:-}" ]]; then
    spec="$SPEC"
else
    # The first 4 blocks of the 1.3B transformer (its embedding left out).
    spec="$work/slice.toml"
    {
        printf 'seed = 0\n[sparsity]\ndensity = 0.1\ndistribution = "erk"\n'
        for part in q_proj k_proj v_proj o_proj; do
            printf '[[layer]]\nname = "layers.{i}.self_attn.%s.weight"\nshape = [2048, 2048]\nrepeat = 4\n' "$part"
        done
        printf '[[layer]]\nname = "layers.{i}.mlp.fc1.weight"\nshape = [8192, 2048]\nrepeat = 4\n'
        printf '[[layer]]\nname = "layers.{i}.mlp.fc2.weight"\nshape = [2048, 8192]\nrepeat = 4\n'
    } >"$spec"
fi
chain_layers="${CHAIN_LAYERS:-48}"
chain_width="${CHAIN_WIDTH:-2048}"
printf '[sparsity]\ndensity = 0.1\n[[layer]]\nname = "hidden.{i}.weight"\nshape = [%s, %s]\nrepeat = %s\n' \
    "$chain_width" "$chain_width" "$chain_layers" >"$work/chain.toml"

# measure NAME COMMAND...: runs the command $runs times (dropping $work/out first when NAME
# starts with "generate"); records "min max" seconds and the largest peak RSS in MB.
declare -A lo hi rss
measure() {
    local name="$1"
    shift
    for _ in $(seq "$runs"); do
        [[ "$name" == generate* ]] && rm -rf "$work/out" "$work/out.safetensors"
        /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/err" || {
            code=$?
            # verify exits 1 on a failed check: not expected here, so every failure stops.
            echo "$name failed ($code):" >&2
            cat "$work/err" >&2
            exit 1
        }
        read -r t kb <"$work/time"
        lo[$name]=$(python3 -c "a='${lo[$name]:-}'; print(min(float(a), $t) if a else $t)")
        hi[$name]=$(python3 -c "a='${hi[$name]:-}'; print(max(float(a), $t) if a else $t)")
        rss[$name]=$(python3 -c "a='${rss[$name]:-}'; print(max(int(a), $kb // 1024) if a else $kb // 1024)")
    done
}
range() { # NAME
    if [[ "${lo[$1]}" == "${hi[$1]}" ]]; then echo "${lo[$1]} s"; else echo "${lo[$1]}-${hi[$1]} s"; fi
}
ratio() { # NAME BASE: the ratio of the best times
    python3 -c "print(f'{${lo[$1]} / ${lo[$2]}:.2f}x')"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $runs runs each; spec $spec" >&2

# 1. One file and a sharded directory of the same tensors. The last generate of each is kept.
measure generate "$eoi" generate "$spec" -o "$work/out.safetensors" -q --force
mv "$work/out.safetensors" "$work/model.safetensors"
measure verify "$eoi" verify "$work/model.safetensors"
measure inspect "$eoi" inspect "$work/model.safetensors"
measure generate-sharded "$eoi" generate "$spec" -o "$work/out" -q --max-shard-size 512MB
mv "$work/out" "$work/sharded"
measure verify-sharded "$eoi" verify "$work/sharded"
measure inspect-sharded "$eoi" inspect "$work/sharded"
size=$(du -sh "$work/model.safetensors" | cut -f1)
rm -rf "$work/sharded"

# 3. One 2048 x 2048 layer: eoi against numpy on the same matrix, and the accuracy.
layer=$("$python" - "$work/model.safetensors" <<'PY'
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    print(next(k for k in f.keys() if not k.endswith("_mask") and f.get_slice(k).get_shape() == [2048, 2048]))
PY
)
measure inspect-layer "$eoi" inspect "$work/model.safetensors" --layers "$layer"
measure inspect-layer-svd "$eoi" inspect "$work/model.safetensors" --layers "$layer" --svd
numpy=$("$python" - "$work/model.safetensors" "$layer" "$work/random.safetensors" <<'PY'
import sys, time, numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
with safe_open(sys.argv[1], "np") as f:
    a = f.get_tensor(sys.argv[2]).astype(np.float64)
def best(fn):
    t = []
    for _ in range(3):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return f"{min(t):.3f}-{max(t):.3f} s"
gram = best(lambda: np.linalg.eigvalsh(a @ a.T))
svd = best(lambda: np.linalg.svd(a, compute_uv=False))
rng = np.random.default_rng(0)
save_file({"random.weight": rng.standard_normal((2048, 2048))}, sys.argv[3])
print(f"{gram}|{svd}")
PY
)
accuracy=$("$python" - "$eoi" "$work/model.safetensors" "$layer" "$work/random.safetensors" <<'PY'
import sys, json, subprocess, numpy as np
from safetensors import safe_open
eoi, model, layer, random = sys.argv[1:5]
out = []
for path, name in [(model, layer), (random, "random.weight")]:
    with safe_open(path, "np") as f:
        s = np.linalg.svd(f.get_tensor(name).astype(np.float64), compute_uv=False)
    row = []
    for flag in [[], ["--svd"]]:
        r = json.loads(subprocess.run([eoi, "inspect", path, "--layers", name, "--json", *flag],
                                      check=True, capture_output=True).stdout)["tensors"][0]
        row.append(max(abs(r["singular_max"] - s[0]), abs(r["singular_min"] - s[-1])) / s[0])
    out.append(f"{name} (sigma {s[-1]:.3g}..{s[0]:.3g}): eig {row[0]:.1e}, --svd {row[1]:.1e}")
print("; ".join(out))
PY
)

# 2. Isometry of a deep linear chain.
measure generate-chain "$eoi" generate "$work/chain.toml" -o "$work/out.safetensors" -q --force
mv "$work/out.safetensors" "$work/chain.safetensors"
rm -f "$work/model.safetensors"
measure isometry "$eoi" isometry "$work/chain.safetensors"

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cat <<EOF
| job | time | peak RSS | against generate |
|---|---|---|---|
| generate, one file ($size) | $(range generate) | ${rss[generate]} MB | 1 |
| verify, one file | $(range verify) | ${rss[verify]} MB | $(ratio verify generate) |
| inspect, one file | $(range inspect) | ${rss[inspect]} MB | $(ratio inspect generate) |
| generate, sharded (512MB) | $(range generate-sharded) | ${rss[generate-sharded]} MB | $(ratio generate-sharded generate) |
| verify, sharded | $(range verify-sharded) | ${rss[verify-sharded]} MB | $(ratio verify-sharded generate) (one file: $(ratio verify-sharded verify)) |
| inspect, sharded | $(range inspect-sharded) | ${rss[inspect-sharded]} MB | $(ratio inspect-sharded generate) (one file: $(ratio inspect-sharded inspect)) |
| generate, chain of $chain_layers x ${chain_width}^2 | $(range generate-chain) | ${rss[generate-chain]} MB | 1 |
| isometry of that chain | $(range isometry) | ${rss[isometry]} MB | $(ratio isometry generate-chain) |

One 2048 x 2048 layer ($layer), whole eoi processes against numpy (in process, f64):
| eoi inspect --layers | eoi inspect --layers --svd | numpy eigvalsh(A @ A.T) | numpy svd(compute_uv=False) |
|---|---|---|---|
| $(range inspect-layer) | $(range inspect-layer-svd) | ${numpy%%|*} | ${numpy##*|} |

Error of inspect's extreme singular values against numpy's SVD, relative to the largest:
$accuracy
EOF
