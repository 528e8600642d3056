#!/usr/bin/env python3
"""Print the tensor shapes of a PyTorch model as the JSON shape list `eoi spec --from` reads.

    python examples/shapes_from_torch.py | eoi spec --from - --density 0.1 --distribution erk > resnet18.toml
    python examples/shapes_from_torch.py --model torchvision.models.resnet50 > resnet50.json

The three commands from a model to a complete EOI-initialized checkpoint (README):

    python examples/shapes_from_torch.py --save resnet18.safetensors > resnet18.json
    eoi spec --from resnet18.json --density 0.1 --distribution erk -o resnet18.toml
    eoi generate resnet18.toml --base resnet18.safetensors -o resnet18-eoi.safetensors

The model is built without pretrained weights on PyTorch's "meta" device, so nothing is
downloaded, allocated or initialized: only names and shapes exist. With --save FILE it is
built on the CPU instead (PyTorch's own initialization) and its state_dict() is written to
FILE with safetensors, the base checkpoint that `eoi generate --base` completes. Every entry of its
state_dict() is listed in order (weights, biases and buffers such as BatchNorm's running
statistics: eoi keeps the rank >= 2 tensors and names the rest in a comment), as
[{"name": ..., "shape": [...]}, ...], with "groups" for convolution weights.

To list your own model, import this file and call shapes(model), or pass --model
package.module.factory for any function that returns a torch.nn.Module (called with
weights=None when it accepts it). Needs torch (and torchvision for the default model).
"""

import argparse
import importlib
import inspect
import json
import sys

import torch


def shapes(model: torch.nn.Module) -> list:
    """The JSON shape list of `model`: its state_dict() names and shapes, in order."""
    groups = {
        f"{name}.weight": module.groups
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.conv._ConvNd)
    }
    entries = []
    for name, tensor in model.state_dict().items():
        entry = {"name": name, "shape": list(tensor.shape)}
        if name in groups:
            entry["groups"] = groups[name]
        entries.append(entry)
    return entries


def build(factory_path: str, device: str) -> torch.nn.Module:
    module_name, _, attribute = factory_path.rpartition(".")
    factory = getattr(importlib.import_module(module_name), attribute)
    kwargs = {}
    if "weights" in inspect.signature(factory).parameters:
        kwargs["weights"] = None
    with torch.device(device):
        return factory(**kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="torchvision.models.resnet18",
        help="dotted path of a function returning an nn.Module (default: %(default)s)",
    )
    parser.add_argument(
        "--save",
        metavar="FILE",
        help="also write the model's state_dict() (built on the CPU) to FILE as safetensors",
    )
    args = parser.parse_args()
    model = build(args.model, "cpu" if args.save else "meta")
    if args.save:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.save)
    json.dump(shapes(model), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
