#!/usr/bin/env python3
"""Print the parameter shapes of a Flax model as the JSON shape list `eoi spec --from` reads.

    python examples/shapes_from_flax.py | eoi spec --from - --layout flax --density 0.1 > cnn.toml
    eoi generate cnn.toml -o cnn.safetensors

Flax stores Dense kernels as (in, out) and convolution kernels as (k..., in, out); with
`--layout flax`, eoi reads them so, writes PyTorch-order shapes in the spec with
layout = "flax" in [output], and `eoi generate` writes Flax shapes again. Names are the
parameter paths joined with ".", e.g. "Conv_0.kernel"; load the output with

    from flax.traverse_util import unflatten_dict
    from safetensors.flax import load_file
    tensors = load_file("cnn.safetensors")
    kernels = unflatten_dict({k: v for k, v in tensors.items() if not k.endswith("_mask")}, sep=".")

and merge them into the params of model.init (biases stay as Flax made them). The model is
traced with jax.eval_shape, so no parameter is computed. The example model is a small CNN;
import this file and call shapes(model, example_input) for your own. Needs jax and flax.
"""

import json
import sys

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.traverse_util import flatten_dict


class CNN(nn.Module):
    """A small image classifier: two 3x3 convolutions and two Dense layers."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


def shapes(model: nn.Module, example_input) -> dict:
    """{name: shape} of every parameter of `model`, names joined with "."."""
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), example_input))
    flat = flatten_dict(variables["params"], sep=".")
    return {name: list(leaf.shape) for name, leaf in flat.items()}


def main() -> int:
    json.dump(shapes(CNN(), jnp.zeros((1, 28, 28, 1))), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
