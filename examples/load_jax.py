#!/usr/bin/env python3
"""Load an eoi artifact into a JAX/Flax model and train it with its masks held fixed.

Builds a Flax (linen) MLP from a spec in specs/ (every layer a Dense, tanh between them),
generates the spec's initialization with `eoi generate --layout flax` (Dense kernels stored
(in, out), as Flax keeps them), loads it with the official `safetensors.flax` loader into
the model's parameters (every kernel must come from the file, and every tensor in the file
must be used; a Dense bias is the file's `<module>.bias` when the spec has `bias_std`, else
zeros), checks that the values are the default torch layout's, transposed, and
takes optimizer steps (AdamW) whose updates are multiplied by the masks, so the weights
outside the masks stay exactly zero.

    python examples/load_jax.py                        # specs/mlp-mnist.toml
    python examples/load_jax.py --spec specs/mlp-1000-tanh.toml --eoi target/release/eoi

Needs jax, flax, optax, numpy and safetensors, and the eoi binary (--eoi, default $EOI or
`eoi` on the PATH). Exits 1 if any check fails.
"""

import argparse
import os
import subprocess
import sys
import tempfile

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors import safe_open
from safetensors.flax import load_file

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def layers_of(spec_path):
    """The spec's layers in order as (module, out, in), `repeat` expanded."""
    with open(spec_path, "rb") as f:
        spec = tomllib.load(f)
    layers = []
    for layer in spec["layer"]:
        names = [layer["name"].replace("{i}", str(i)) for i in range(layer["repeat"])] if "repeat" in layer else [layer["name"]]
        if len(layer["shape"]) != 2:
            sys.exit(f"{spec_path}: layer {layer['name']} has shape {layer['shape']}: this example builds MLPs (rank-2 weights)")
        if not layer["name"].endswith(".weight"):
            sys.exit(f"{spec_path}: layer {layer['name']} is not named <module>.weight")
        out, inp = layer["shape"]
        layers += [(name[: -len(".weight")], out, inp) for name in names]
    return layers


class MLP(nn.Module):
    """Dense layers named after the spec's modules (net.0, net.2, ...), tanh between them."""

    layers: tuple

    @nn.compact
    def __call__(self, x):
        for k, (module, out, _) in enumerate(self.layers):
            x = nn.Dense(out, name=module)(x)
            if k + 1 < len(self.layers):
                x = jnp.tanh(x)
        return x


def generate(eoi, spec, out, *extra):
    command = [eoi, "generate", spec, "-o", out, "--force", "-q", *extra]
    try:
        subprocess.run(command, check=True)
    except FileNotFoundError:
        sys.exit(f"cannot run eoi as '{eoi}': build it (cargo build --release) and pass --eoi target/release/eoi")
    except subprocess.CalledProcessError as e:
        sys.exit(f"`{' '.join(command)}` failed with exit code {e.returncode}")


def check(condition, message):
    if not condition:
        print(f"FAIL  {message}")
        sys.exit(1)
    print(f"ok    {message}")


def masked_updates(masks):
    """An optax transformation that multiplies every update by its mask."""

    def update(updates, state, params=None):
        return jax.tree.map(jnp.multiply, updates, masks), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=os.path.join(ROOT, "specs", "mlp-mnist.toml"))
    p.add_argument("--eoi", default=os.environ.get("EOI", "eoi"))
    p.add_argument("--steps", type=int, default=3, help="optimizer steps to take")
    args = p.parse_args(argv)

    layers = layers_of(args.spec)
    with tempfile.TemporaryDirectory(prefix="eoi-load-jax-") as tmp:
        flax_file = os.path.join(tmp, "init-flax.safetensors")
        torch_file = os.path.join(tmp, "init-torch.safetensors")
        generate(args.eoi, args.spec, flax_file, "--layout", "flax")
        generate(args.eoi, args.spec, torch_file)
        with safe_open(flax_file, framework="flax") as f:
            check(f.metadata().get("format") == "flax", "the file's safetensors format is 'flax'")
        tensors = load_file(flax_file)
        reference = load_file(torch_file)

    model = MLP(tuple(layers))
    x = jax.random.normal(jax.random.key(0), (32, layers[0][2]))
    params = model.init(jax.random.key(1), x)["params"]

    # Every kernel from the file, strictly: same names, same shapes, nothing left over.
    used = set()
    masks = {}
    for module, out, inp in layers:
        kernel, mask = tensors[f"{module}.weight"], tensors[f"{module}.weight_mask"]
        expected = params[module]["kernel"].shape
        check(kernel.shape == expected == (inp, out), f"{module}: kernel {kernel.shape} fits Dense({out}) on {inp} inputs")
        bias = tensors.get(f"{module}.bias", jnp.zeros(out, kernel.dtype))
        check(bias.shape == params[module]["bias"].shape == (out,), f"{module}: bias {bias.shape} fits Dense({out})")
        params[module] = {"kernel": kernel, "bias": bias}
        masks[module] = {"kernel": mask.astype(kernel.dtype), "bias": jnp.ones_like(bias)}
        used |= {f"{module}.weight", f"{module}.weight_mask", f"{module}.bias"}
    check(set(tensors) <= used, f"all {len(tensors)} tensors of the file are used")
    biases = sum(f"{m}.bias" in tensors for m, _, _ in layers)
    check(True, f"{biases} of {len(layers)} Dense biases from the file (bias_std in the spec), the others zero")
    check(
        all(np.array_equal(np.asarray(tensors[f"{m}.weight"]), np.asarray(reference[f"{m}.weight"]).T) for m, _, _ in layers),
        "flax kernels are the torch layout's (out, in) weights, transposed",
    )
    outside = lambda p: max(float(jnp.max(jnp.abs(jnp.where(masks[m]["kernel"] == 0, p[m]["kernel"], 0)))) for m, _, _ in layers)  # noqa: E731
    check(outside(params) == 0.0, "weights outside the masks start at zero")

    # A few AdamW steps on random data; the updates are masked, so pruned weights stay zero.
    labels = jax.random.randint(jax.random.key(2), (32,), 0, layers[-1][1])
    optimizer = optax.chain(optax.adamw(1e-3, weight_decay=1e-2), masked_updates(masks))
    state = optimizer.init(params)

    def loss(params):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    before = params
    for k in range(args.steps):
        params, state, value = step(params, state)
        print(f"      step {k + 1}: loss {float(value):.4f}")
    check(outside(params) == 0.0, f"weights outside the masks are still exactly zero after {args.steps} AdamW steps")
    moved = sum(int(jnp.sum(params[m]["kernel"] != before[m]["kernel"])) for m, _, _ in layers)
    kept = sum(int(jnp.sum(masks[m]["kernel"])) for m, _, _ in layers)
    check(moved > kept // 2, f"the kept weights train ({moved} of {kept} changed)")
    print(f"loaded {args.spec} into a {len(layers)}-layer Flax MLP and trained it with fixed masks")


if __name__ == "__main__":
    main()
