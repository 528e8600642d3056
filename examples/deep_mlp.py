#!/usr/bin/env python3
"""The 1000-layer proof: train a vanilla 1000-layer tanh MLP from eoi's initializations.

Generates the initialization of specs/mlp-1000-tanh-digits.toml (the paper's 1000-layer tanh
MLP: width 128, density 0.125 in the hidden layers, gain 1.0247, first and last layer
dense; input sized for the 64 pixels of scikit-learn's bundled digits data) with `eoi
generate`, once per scheme, then trains each with plain SGD on the digits data (nothing is
downloaded), the masks held fixed: a weight outside its mask starts at zero and its gradient
is masked, so it stays zero. Prints a table of test accuracy per scheme; with --plot draws
test accuracy against step for every scheme.

No residual connections, no normalization: only an initialization under which the
input-output Jacobian stays well conditioned (dynamical isometry) lets gradients reach the
first layers through 1000 tanh layers.

    python examples/deep_mlp.py                                 # every scheme, full size
    python examples/deep_mlp.py --schemes eoi,kaiming --depth 200 --steps 150
    python examples/deep_mlp.py --plot docs/deep-mlp.png --artifacts runs/
    python examples/deep_mlp.py --schemes sao --include earlier.json --plot all.png
    python examples/deep_mlp.py --nm 2:4 --schemes eoi,kaiming,scaled-kaiming

With --nm N:M the hidden layers are N:M sparse (NVIDIA's 2:4 and its kin): the spec gets
`nm = "N:M"` in [sparsity] and density N/M (0.5 for 2:4), so EOI makes every hidden layer
exactly orthogonal with at most N nonzeros in every group of M inputs of every row, and the
random-mask baselines (kaiming, scaled-kaiming, orthogonal) draw random N:M masks.

Needs jax, numpy, safetensors, scikit-learn (and matplotlib for --plot), and the eoi
binary (--eoi, default $EOI or `eoi` on the PATH).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

SPEC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "specs", "mlp-1000-tanh-digits.toml"))
SCHEMES = ["eoi", "kaiming", "scaled-kaiming", "orthogonal", "sao", "approx-isometry"]


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Train the 1000-layer tanh MLP on scikit-learn's digits from eoi artifacts, one per scheme.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--schemes", default=",".join(SCHEMES[:4]),
                   help="comma-separated eoi schemes to compare (" + ", ".join(SCHEMES) + ")")
    p.add_argument("--depth", type=int, default=1000, help="linear layers in all (input + hidden + output), at least 3")
    p.add_argument("--steps", type=int, default=300, help="SGD steps")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    p.add_argument("--batch", type=int, default=128, help="minibatch size")
    p.add_argument("--eval-every", type=int, default=10, help="steps between test-accuracy evaluations")
    p.add_argument("--seed", type=int, default=1, help="seed of the initialization (eoi --seed), the data split and the batches")
    p.add_argument("--nm", metavar="N:M",
                   help="make the hidden layers N:M sparse (such as 2:4) at density N/M instead of the spec's density")
    p.add_argument("--spec", default=SPEC, help="the spec to generate from; its `repeat` is set to DEPTH - 2")
    p.add_argument("--eoi", default=os.environ.get("EOI", "eoi"), help="the eoi binary")
    p.add_argument("--artifacts", metavar="DIR", help="keep the generated artifacts here (default: a temporary directory)")
    p.add_argument("--plot", metavar="FILE.png", help="draw test accuracy against step for every scheme")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--include", metavar="FILE", action="append", default=[],
                   help="results of an earlier run (its --json) with the same depth, steps, lr, batch and seed: "
                        "their schemes join the table and the plot without being trained again (repeatable)")
    args = p.parse_args(argv)
    args.schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in args.schemes if s not in SCHEMES]
    if unknown:
        p.error(f"unknown scheme(s) {', '.join(unknown)}: choose from {', '.join(SCHEMES)}")
    if args.depth < 3:
        p.error("--depth must be at least 3 (input, one hidden and output layer)")
    if args.steps < 1 or args.batch < 1 or args.eval_every < 1:
        p.error("--steps, --batch and --eval-every must be positive")
    if args.nm is not None:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", args.nm)
        if not match or not 0 < int(match.group(1)) < int(match.group(2)):
            p.error(f"--nm {args.nm!r}: write the pattern as N:M with 0 < N < M, such as 2:4")
        n, m = int(match.group(1)), int(match.group(2))
        if m % n:
            p.error(f"--nm {args.nm}: N must divide M (eoi splits every group of M into M/N classes of N)")
        args.nm = f"{n}:{m}"
        args.density = n / m
        unusable = [s for s in args.schemes if s in ("sao", "approx-isometry")]
        if unusable:
            p.error(f"--nm: scheme(s) {', '.join(unusable)} cannot make N:M layers; "
                    "use eoi, kaiming, scaled-kaiming or orthogonal")
    else:
        args.density = None
    return args


SETTINGS = ("depth", "steps", "lr", "batch", "seed", "nm")


def included(args, settings=SETTINGS):
    """The results of earlier runs named by --include, checked to share this run's `settings`
    (the names of the arguments that must agree)."""
    results = []
    for path in args.include:
        try:
            with open(path, encoding="utf-8") as f:
                earlier = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"--include {path}: cannot read it as an earlier run's --json: {e}")
        if not isinstance(earlier, dict) or not isinstance(earlier.get("results"), list):
            sys.exit(f"--include {path}: not the --json of an earlier run (no \"results\" list)")
        differ = [k for k in settings if earlier.get(k) != getattr(args, k)]
        if differ:
            sys.exit(f"--include {path}: its " + ", ".join(f"{k} {earlier.get(k)!r}" for k in differ)
                     + " differ from this run's (" + ", ".join(f"{k} {getattr(args, k)!r}" for k in differ) + ")")
        for r in earlier["results"]:
            if r.get("scheme") in args.schemes or any(r.get("scheme") == o["scheme"] for o in results):
                sys.exit(f"--include {path}: scheme {r.get('scheme')!r} is already trained here or included twice")
            results.append(r)
    return results


def digits(seed):
    """scikit-learn's bundled 8x8 digits, standardised, split 1400 / 397."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int32)
    train, test = slice(0, 1400), slice(1400, None)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def spec_text(path, depth, nm=None, density=None):
    """The spec with its hidden `repeat` set to depth - 2; with an N:M pattern, [sparsity]'s
    density set to N/M and `nm = "N:M"` added after it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text, n = re.subn(r"(?m)^repeat\s*=\s*\d+", f"repeat = {depth - 2}", text)
    if n != 1:
        sys.exit(f"{path}: expected exactly one `repeat = N` line to set the depth, found {n}")
    if nm is not None:
        text, n = re.subn(r"(?m)^density\s*=\s*[0-9.eE+-]+\s*(#.*)?$",
                          f'density = {density!r}\nnm = "{nm}"', text, count=1)
        if n != 1:
            sys.exit(f"{path}: expected a `density = D` line in [sparsity] to set --nm, found none")
    return text


def generate(eoi, text, scheme, seed, out):
    """Runs `eoi generate - -o OUT --scheme SCHEME --seed SEED` with the spec on stdin."""
    command = [eoi, "generate", "-", "-o", out, "--scheme", scheme, "--seed", str(seed), "--force", "-q"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, input=text, text=True, capture_output=True)
    except FileNotFoundError:
        sys.exit(f"cannot run eoi as '{eoi}': build it (cargo build --release) and pass --eoi target/release/eoi, or put it on the PATH")
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed:\n{done.stderr.strip()}")
    return time.perf_counter() - started


def load(path, depth):
    """Weights (out, in), masks and biases of input, hidden.* and output, as float32 arrays;
    biases are zero where the artifact has none."""
    from safetensors.numpy import load_file

    t = load_file(path)
    names = ["input"] + [f"hidden.{i}" for i in range(depth - 2)] + ["output"]

    def layer(name):
        w = t[f"{name}.weight"].astype(np.float32)
        m = t[f"{name}.weight_mask"].astype(np.float32)
        b = t.get(f"{name}.bias", np.zeros(w.shape[0])).astype(np.float32)
        if np.any(w[m == 0] != 0):
            sys.exit(f"{path}: {name}.weight is nonzero outside its mask")
        return w, m, b

    first, last = layer(names[0]), layer(names[-1])
    hidden = [layer(n) for n in names[1:-1]]
    stack = lambda k: np.stack([h[k] for h in hidden])  # noqa: E731
    params = {"w_in": first[0], "b_in": first[2], "w": stack(0), "b": stack(2), "w_out": last[0], "b_out": last[2]}
    masks = {"w_in": first[1], "b_in": np.ones_like(first[2]), "w": stack(1), "b": np.ones_like(stack(2)),
             "w_out": last[1], "b_out": np.ones_like(last[2])}
    return params, masks


def train(params, masks, data, args):
    """SGD on the MLP of `load` (see `sgd`)."""
    import jax
    import jax.numpy as jnp

    def forward(p, x):
        h = jnp.tanh(x @ p["w_in"].T + p["b_in"])

        def layer(h, wb):
            w, b = wb
            return jnp.tanh(h @ w.T + b), None

        h, _ = jax.lax.scan(layer, h, (p["w"], p["b"]))
        return h @ p["w_out"].T + p["b_out"]

    return sgd(forward, params, masks, data, args)


def sgd(forward, params, masks, data, args):
    """Plain SGD on the softmax cross-entropy of `forward(p, x)` with masked gradients (deep_cnn.py
    uses it too); test accuracy every --eval-every steps. Returns [(step, accuracy)], the final
    loss, whether every masked weight is still exactly zero, and the seconds spent compiling."""
    import jax
    import jax.numpy as jnp

    x_train, y_train, x_test, y_test = data

    def loss(p, x, y):
        logits = forward(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    @jax.jit
    def step(p, m, x, y):
        value, grads = jax.value_and_grad(loss)(p, x, y)
        return jax.tree.map(lambda w, g, k: w - args.lr * g * k, p, grads, m), value

    @jax.jit
    def accuracy(p, x, y):
        return jnp.mean(jnp.argmax(forward(p, x), axis=1) == y)

    p = jax.tree.map(jnp.asarray, params)
    m = jax.tree.map(jnp.asarray, masks)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    curve = [(0, float(accuracy(p, x_test, y_test)))]
    order, at = rng.permutation(len(x_train)), 0
    value = float("nan")
    compile_seconds = 0.0
    for k in range(1, args.steps + 1):
        if at + args.batch > len(order):
            order, at = rng.permutation(len(x_train)), 0
        batch = order[at:at + args.batch]
        at += args.batch
        p, value = step(p, m, x_train[batch], y_train[batch])
        if k == 1:
            jax.block_until_ready(p)
            compile_seconds = time.perf_counter() - started
        if k % args.eval_every == 0 or k == args.steps:
            curve.append((k, float(accuracy(p, x_test, y_test))))
    held = all(bool(jnp.all(jnp.where(mk == 0, pk, 0) == 0))
               for pk, mk in zip(jax.tree.leaves(p), jax.tree.leaves(m)))
    return curve, float(value), held, compile_seconds


def plot(results, title, path):
    """Test accuracy against SGD steps, a line per scheme (deep_cnn.py uses it too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=120)
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    for k, r in enumerate(results):
        steps, acc = zip(*r["curve"])
        ax.plot(steps, acc, linestyle=styles[k % len(styles)], linewidth=2.2 if r["scheme"] == "eoi" else 1.6,
                label=f"{r['scheme']} ({r['test_accuracy']:.1%})")
    ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance (10%)")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="scheme (final)")
    fig.tight_layout()
    fig.savefig(path)


def run(args, text, prefix, load, train, data):
    """Each of --schemes: generated from `text`, loaded by `load(path, depth)`, trained by
    `train(params, masks, data, args)`; the results, as printed (deep_cnn.py uses it too)."""
    keep = args.artifacts
    if keep:
        os.makedirs(keep, exist_ok=True)
    scratch = None if keep else tempfile.TemporaryDirectory(prefix=prefix)
    where = keep or scratch.name
    results = []
    try:
        for scheme in args.schemes:
            path = os.path.join(where, f"{scheme}.safetensors")
            seconds_generate = generate(args.eoi, text, scheme, args.seed, path)
            params, masks = load(path, args.depth)
            started = time.perf_counter()
            curve, final_loss, held, compile_seconds = train(params, masks, data, args)
            seconds = time.perf_counter() - started
            if not held:
                sys.exit(f"{scheme}: a masked weight became nonzero during training")
            result = {"scheme": scheme, "test_accuracy": curve[-1][1], "final_loss": final_loss,
                      "generate_seconds": seconds_generate, "train_seconds": seconds,
                      "compile_seconds": compile_seconds, "curve": curve}
            results.append(result)
            print(f"  {scheme:<16} test accuracy {result['test_accuracy']:.3f}  (train loss {final_loss:.3f}, "
                  f"{seconds:.0f} s, of which {compile_seconds:.0f} s compiling)", flush=True)
    finally:
        if scratch:
            scratch.cleanup()
    return results


def report(args, results, schemes, settings, title):
    """The results (this run's and --include's) in `schemes` order as a table, and --plot and
    --json when asked (deep_cnn.py uses it too)."""
    order = {s: k for k, s in enumerate(schemes)}
    results = sorted(results, key=lambda r: order.get(r["scheme"], len(schemes)))
    print()
    print("| scheme | test accuracy | final train loss |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['scheme']} | {r['test_accuracy']:.1%} | {r['final_loss']:.3f} |")
    if args.plot:
        plot(results, title, args.plot)
        print(f"\nwrote {args.plot}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({**{k: getattr(args, k) for k in settings}, "results": results}, f, indent=1)


def main(argv=None):
    args = parse_args(argv)
    earlier = included(args)
    data = digits(args.seed)
    text = spec_text(args.spec, args.depth, args.nm, args.density)
    pattern = f", hidden layers {args.nm} at density {args.density:g}" if args.nm else ""
    print(f"{args.depth}-layer tanh MLP{pattern}, digits 1400 train / {len(data[3])} test, SGD lr {args.lr}, "
          f"batch {args.batch}, {args.steps} steps, seed {args.seed}", flush=True)
    results = run(args, text, "eoi-deep-mlp-", load, train, data)
    sparsity = f"{args.nm} (density {args.density:g})" if args.nm else "density 0.125"
    title = f"{args.depth}-layer tanh MLP on digits, {sparsity}, SGD lr {args.lr}, batch {args.batch}"
    report(args, earlier + results, SCHEMES, SETTINGS, title)


if __name__ == "__main__":
    main()
