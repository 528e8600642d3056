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

The output is a list [{"name": ..., "shape": [...], "module": ..., "kind": ...}, ...]:
"module" is the class of the Flax module holding the parameter, and "kind" what eoi makes
of it: "linear" (the kernel of Dense, or of DenseGeneral when it is a matrix), "conv" (the
kernel of Conv or ConvTranspose), "embedding" (Embed), "norm" (BatchNorm, LayerNorm,
GroupNorm, RMSNorm and any class with "Norm" in its name), "bias", or "other" (anything
else, e.g. a DenseGeneral kernel of rank 3, which eoi cannot read as a matrix), and
"groups" for convolution kernels (the module's feature_group_count).
`eoi spec --from` proposes only the linear and conv kernels as layers.
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


NORMS = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def kind_of(module: type, leaf: str, shape: tuple) -> str:
    """What eoi makes of parameter `leaf` of a module of class `module` (see the docstring)."""
    if issubclass(module, NORMS) or "Norm" in module.__name__:
        return "norm"
    if leaf == "bias":
        return "bias"
    if leaf == "kernel" and issubclass(module, (nn.Conv, nn.ConvTranspose)):
        return "conv"
    # A DenseGeneral kernel of rank > 2 (attention's (in, heads, head_dim)) is not a matrix
    # eoi can read: it would be taken for a convolution kernel.
    if leaf == "kernel" and issubclass(module, (nn.Dense, nn.DenseGeneral)):
        return "linear" if len(shape) == 2 else "other"
    if leaf == "embedding" and issubclass(module, nn.Embed):
        return "embedding"
    return "other"


def shapes(model: nn.Module, example_input) -> list:
    """The JSON shape list of `model`'s parameters, names joined with ".", with each
    parameter's module class and kind."""
    classes, groups = {}, {}

    def record(next_fun, args, kwargs, context):
        classes[context.module.path] = type(context.module)
        groups[context.module.path] = getattr(context.module, "feature_group_count", None)
        return next_fun(*args, **kwargs)

    def init():
        with nn.intercept_methods(record):
            return model.init(jax.random.PRNGKey(0), example_input)

    variables = jax.eval_shape(init)
    entries = []
    for path, leaf in flatten_dict(variables["params"]).items():
        module = classes.get(tuple(path[:-1]), type(model))
        entry = {
            "name": ".".join(path),
            "shape": list(leaf.shape),
            "module": module.__name__,
            "kind": kind_of(module, path[-1], leaf.shape),
        }
        # A convolution's feature_group_count is PyTorch's groups.
        if entry["kind"] == "conv" and groups.get(tuple(path[:-1])):
            entry["groups"] = groups[tuple(path[:-1])]
        entries.append(entry)
    return entries


def main() -> int:
    json.dump(shapes(CNN(), jnp.zeros((1, 28, 28, 1))), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
