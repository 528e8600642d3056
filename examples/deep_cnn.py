#!/usr/bin/env python3
"""The deep-CNN proof: train a vanilla deep tanh CNN from eoi's initializations.

Generates the initialization of specs/cnn-digits.toml (the paper's 1000-layer tanh CNN sized
for a CPU: a first 3x3 convolution lifting the one-channel 8x8 digits to C channels, DEPTH - 2
hidden C -> C 3x3 convolutions with circular padding and no stride, a dense classifier on the
flattened C x 8 x 8 features; density 0.125 in the hidden convolutions, gain 1.0247, bias std
0.00448, first and last layer dense) with `eoi generate`, once per scheme, then trains each
with plain SGD on scikit-learn's bundled digits (nothing is downloaded), the masks held fixed:
a weight outside its mask starts at zero and its gradient is masked, so it stays zero. Prints
a table of test accuracy per scheme; with --plot draws test accuracy against step.

No residual connections, no normalization: only an initialization under which the
input-output Jacobian stays well conditioned (dynamical isometry) lets gradients reach the
first layers through a deep stack of tanh convolutions. `eoi isometry FILE --grid 8 --layers
'hidden.*'` measures that Jacobian on an artifact kept with --artifacts.

    python examples/deep_cnn.py                                 # eoi and the baselines
    python examples/deep_cnn.py --schemes eoi,kaiming --depth 50 --steps 100
    python examples/deep_cnn.py --plot docs/deep-cnn-200.png --artifacts runs/
    python examples/deep_cnn.py --schemes sao --include earlier.json --plot all.png

The layer loop is unrolled in Python under jax.jit (about ten times faster per step on a CPU
than lax.scan over the stacked layers, at the cost of a compile time that grows with the
depth). Needs jax, numpy, safetensors, scikit-learn (and matplotlib for --plot), and the eoi
binary (--eoi, default $EOI or `eoi` on the PATH).
"""

import argparse
import os
import re
import sys

import numpy as np

# The digits data, the earlier runs of --include, `eoi generate`, SGD, running the schemes and
# reporting them as deep_mlp.py has them.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deep_mlp import digits, generate, included, report, run, sgd  # noqa: E402

SPEC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "specs", "cnn-digits.toml"))
SCHEMES = ["eoi", "kaiming", "scaled-kaiming", "orthogonal", "conv-orthogonal", "sao"]
SETTINGS = ("depth", "channels", "steps", "lr", "batch", "seed")
SIDE = 8  # the digits are 8 x 8


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Train a deep tanh CNN on scikit-learn's digits from eoi artifacts, one per scheme.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--schemes", default=",".join(SCHEMES),
                   help="comma-separated eoi schemes to compare (" + ", ".join(SCHEMES) + ")")
    p.add_argument("--depth", type=int, default=200,
                   help="layers in all (first convolution + hidden convolutions + classifier), at least 3")
    p.add_argument("--channels", type=int, default=16, help="channels C of the hidden convolutions")
    p.add_argument("--steps", type=int, default=200, help="SGD steps")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    p.add_argument("--batch", type=int, default=128, help="minibatch size")
    p.add_argument("--eval-every", type=int, default=10, help="steps between test-accuracy evaluations")
    p.add_argument("--seed", type=int, default=1, help="seed of the initialization (eoi --seed), the data split and the batches")
    p.add_argument("--spec", default=SPEC,
                   help="the spec to generate from; its `repeat` is set to DEPTH - 2 and its shapes to CHANNELS")
    p.add_argument("--eoi", default=os.environ.get("EOI", "eoi"), help="the eoi binary")
    p.add_argument("--artifacts", metavar="DIR", help="keep the generated artifacts here (default: a temporary directory)")
    p.add_argument("--plot", metavar="FILE.png", help="draw test accuracy against step for every scheme")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--include", metavar="FILE", action="append", default=[],
                   help="results of an earlier run (its --json) with the same depth, channels, steps, lr, batch and "
                        "seed: their schemes join the table and the plot without being trained again (repeatable)")
    args = p.parse_args(argv)
    args.schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in args.schemes if s not in SCHEMES]
    if unknown:
        p.error(f"unknown scheme(s) {', '.join(unknown)}: choose from {', '.join(SCHEMES)}")
    if args.depth < 3:
        p.error("--depth must be at least 3 (first convolution, one hidden convolution and the classifier)")
    if args.channels < 1:
        p.error("--channels must be positive")
    if args.steps < 1 or args.batch < 1 or args.eval_every < 1:
        p.error("--steps, --batch and --eval-every must be positive")
    return args


def spec_text(path, depth, channels):
    """The spec with its hidden `repeat` set to depth - 2 and its three shapes to `channels`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text, n = re.subn(r"(?m)^repeat\s*=\s*\d+", f"repeat = {depth - 2}", text)
    if n != 1:
        sys.exit(f"{path}: expected exactly one `repeat = N` line to set the depth, found {n}")
    c = channels
    for name, shape in [("input.weight", [c, 1, 3, 3]), ("hidden.{i}.weight", [c, c, 3, 3]),
                        ("output.weight", [10, c * SIDE * SIDE])]:
        pattern = r'(?m)^(name\s*=\s*"' + re.escape(name) + r'"\s*\nshape\s*=\s*)\[[^\]]*\]'
        text, n = re.subn(pattern, lambda m: m.group(1) + str(shape), text)
        if n != 1:
            sys.exit(f"{path}: expected a layer \"{name}\" with its `shape` on the next line, found {n}")
    return text


def load(path, depth):
    """Weights (PyTorch layout: (out, in, kh, kw) and (out, in)), masks and biases of input,
    hidden.* and output, as float32 arrays; biases are zero where the artifact has none."""
    from safetensors.numpy import load_file

    t = load_file(path)

    def layer(name):
        w = t[f"{name}.weight"].astype(np.float32)
        m = t[f"{name}.weight_mask"].astype(np.float32)
        b = t.get(f"{name}.bias", np.zeros(w.shape[0])).astype(np.float32)
        if np.any(w[m == 0] != 0):
            sys.exit(f"{path}: {name}.weight is nonzero outside its mask")
        return w, m, b

    layers = [layer(n) for n in ["input"] + [f"hidden.{i}" for i in range(depth - 2)] + ["output"]]
    params = {"w": [w for w, _, _ in layers], "b": [b for _, _, b in layers]}
    masks = {"w": [m for _, m, _ in layers], "b": [np.ones_like(b) for _, _, b in layers]}
    return params, masks


def train(params, masks, data, args):
    """SGD on the CNN of `load` (see deep_mlp.py's `sgd`), on the digits as 1 x 8 x 8 images."""
    import jax
    import jax.numpy as jnp

    x_train, y_train, x_test, y_test = data
    images = (x_train.reshape(-1, 1, SIDE, SIDE), y_train, x_test.reshape(-1, 1, SIDE, SIDE), y_test)

    def conv(h, w, b):
        # Circular padding, so every layer maps C x 8 x 8 to C x 8 x 8 as a periodic
        # convolution (cross-correlation, as PyTorch's Conv2d; the centre tap is (k - 1) // 2).
        k = w.shape[-1]
        before, after = (k - 1) // 2, k - 1 - (k - 1) // 2
        h = jnp.pad(h, ((0, 0), (0, 0), (before, after), (before, after)), mode="wrap")
        out = jax.lax.conv_general_dilated(h, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return out + b[None, :, None, None]

    def forward(p, x):
        h = x
        for w, b in zip(p["w"][:-1], p["b"][:-1]):  # unrolled: one jitted graph
            h = jnp.tanh(conv(h, w, b))
        return h.reshape(h.shape[0], -1) @ p["w"][-1].T + p["b"][-1]

    return sgd(forward, params, masks, images, args)


def main(argv=None):
    args = parse_args(argv)
    earlier = included(args, SETTINGS)
    data = digits(args.seed)
    text = spec_text(args.spec, args.depth, args.channels)
    print(f"{args.depth}-layer tanh CNN, {args.channels} channels, digits 1400 train / {len(data[3])} test, "
          f"SGD lr {args.lr}, batch {args.batch}, {args.steps} steps, seed {args.seed}", flush=True)
    results = run(args, text, "eoi-deep-cnn-", load, train, data)
    title = (f"{args.depth}-layer tanh CNN ({args.channels} channels) on digits, density 0.125, "
             f"SGD lr {args.lr}, batch {args.batch}")
    report(args, earlier + results, SCHEMES, SETTINGS, title)


if __name__ == "__main__":
    main()
