#!/usr/bin/env python3
"""Load an eoi artifact into a JAX/Flax model and train it with its masks held fixed.

Builds a Flax (linen) MLP from a spec in specs/ (a Dense per layer, named after the
spec's module: `net.0.weight` is the Dense `net.0`; tanh between them), and with the eoi
package (docs/python.md):

  * eoi.generate(spec) and eoi.flax.apply(params, ...): every kernel (and every bias of a
    spec with `bias_std`) from the artifact, strictly, the PyTorch layout transposed on
    load, which must equal what `--layout flax` gives;
  * eoi.optax.masked(optax.adamw(...), masks): AdamW steps that keep the weights outside
    the masks exactly zero while the others train.

    pip install '.[jax]'                               # from a clone: eoi, JAX, Flax, optax
    python examples/load_jax.py                        # specs/mlp-mnist.toml
    python examples/load_jax.py --spec specs/mlp-1000-tanh.toml --eoi target/release/eoi

--eoi runs another eoi binary than the one installed with the package (it sets
EOI_BINARY). Prints one `ok` line per check; exits 1 if one fails.
"""

import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import eoi
import eoi.flax
import eoi.optax

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


class MLP(nn.Module):
    """Dense layers named after the spec's modules, tanh between them."""

    layers: tuple  # (module, out) per layer

    @nn.compact
    def __call__(self, x):
        for k, (module, out) in enumerate(self.layers):
            x = nn.Dense(out, name=module)(x)
            if k + 1 < len(self.layers):
                x = jnp.tanh(x)
        return x


def check(condition, message):
    print(f"{'ok  ' if condition else 'FAIL'}  {message}")
    if not condition:
        sys.exit(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=os.path.join(ROOT, "specs", "mlp-mnist.toml"))
    p.add_argument("--eoi", help="the eoi binary to run (default: the one installed with the package)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps to take")
    args = p.parse_args(argv)
    if args.eoi:
        os.environ["EOI_BINARY"] = args.eoi

    planned = eoi.plan(args.spec)["layers"]
    for layer in planned:
        if len(layer["shape"]) != 2 or not layer["name"].endswith(".weight"):
            sys.exit(f"{args.spec}: layer {layer['name']} {layer['shape']}: this example builds MLPs of <module>.weight layers")
    layers = [(layer["name"].removesuffix(".weight"), layer["shape"]) for layer in planned]
    model = MLP(tuple((module, shape[0]) for module, shape in layers))
    x = jax.random.normal(jax.random.key(0), (32, layers[0][1][1]))
    init = model.init(jax.random.key(1), x)["params"]

    artifact = eoi.generate(args.spec)
    params, masks = eoi.flax.apply(init, artifact)  # strict: every tensor must find its leaf
    check(True, f"every tensor of the artifact found its parameter ({len(artifact)} tensors, {len(masks)} masks)")
    flax_params, _ = eoi.flax.apply(init, eoi.generate(args.spec, layout="flax"))
    same = jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, flax_params))
    check(same, "torch layout transposed on load equals eoi's flax layout")
    biases = [m for m, _ in layers if f"{m}.bias" in artifact]
    check(
        all(np.array_equal(params[m]["bias"], artifact[f"{m}.bias"]) for m in biases),
        f"{len(biases)} of {len(layers)} Dense biases from the artifact (bias_std in the spec), the others left as initialized",
    )

    def outside(params):
        return max(float(jnp.max(jnp.abs(jnp.where(masks[m]["kernel"], 0, params[m]["kernel"])))) for m, _ in layers)

    check(outside(params) == 0.0, "weights outside the masks start at zero")

    labels = jax.random.randint(jax.random.key(2), (32,), 0, layers[-1][1][0])
    optimizer = eoi.optax.masked(optax.adamw(1e-3, weight_decay=1e-2), masks)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        def loss(params):
            logits = model.apply({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    before = params
    for k in range(args.steps):
        params, state, value = step(params, state)
        print(f"      step {k + 1}: loss {float(value):.4f}")
    check(outside(params) == 0.0, f"weights outside the masks are still exactly zero after {args.steps} AdamW steps")
    moved = sum(int(jnp.sum(params[m]["kernel"] != before[m]["kernel"])) for m, _ in layers)
    kept = sum(int(jnp.sum(masks[m]["kernel"])) for m, _ in layers)
    check(moved > kept // 2, f"the kept weights train ({moved} of {kept} changed)")
    print(f"loaded {args.spec} into a {len(layers)}-layer Flax MLP and trained it with fixed masks")


if __name__ == "__main__":
    main()
