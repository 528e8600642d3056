#!/usr/bin/env python3
"""Print the tensor shapes of a PyTorch model as the JSON shape list `eoi spec --from` reads.

    python examples/shapes_from_torch.py | eoi spec --from - --density 0.1 --distribution erk > resnet18.toml
    python examples/shapes_from_torch.py --model torchvision.models.resnet50 > resnet50.json

The three commands from a model to a complete EOI-initialized checkpoint (docs/guide.md, "Complete checkpoints"):

    python examples/shapes_from_torch.py --save resnet18.safetensors > resnet18.json
    eoi spec --from resnet18.json --density 0.1 --distribution erk -o resnet18.toml
    eoi generate resnet18.toml --base resnet18.safetensors -o resnet18-eoi.safetensors

The model is built without pretrained weights on PyTorch's "meta" device, so nothing is
downloaded, allocated or initialized: only names and shapes exist. With --save FILE it is
built on the CPU instead (PyTorch's own initialization) and written to FILE with
safetensors, the base checkpoint that `eoi generate --base` completes: one tensor per
storage, as Hugging Face's save_pretrained and safetensors.torch.save_model write a model
with tied weights (GPT-2's lm_head.weight is transformer.wte.weight: only the first name,
in state_dict order, is written).

Every entry of the state_dict() is listed in order (weights, biases and buffers such as
BatchNorm's running statistics), as [{"name": ..., "shape": [...], "module": ..., "kind":
...}, ...]:

  module   the class name of the module that holds the tensor (for humans)
  kind     what eoi makes of it (docs/guide.md, "Start from your model"):
             linear     the weight of a linear map: nn.Linear and its subclasses,
                        transformers' Conv1D (GPT-2; stored (in, out)), and
                        nn.MultiheadAttention's in_proj_weight
             conv       the weight of nn.Conv1d/2d/3d, and of nn.ConvTranspose1d/2d/3d
                        (stored (in, out / groups, k...) and initialized as stored: the
                        transposed convolution is the adjoint of an orthogonal one, so it
                        is orthogonal too)
             embedding  the weight of nn.Embedding / nn.EmbeddingBag
             norm       parameters of normalization layers (BatchNorm, LayerNorm,
                        GroupNorm, RMSNorm, and any module whose class name has "Norm")
             bias       the bias of any other module
             buffer     a buffer (running statistics, counters, position ids)
             other      anything else (class tokens, position tables, layer scales ...)
  groups   the module's groups, for convolutions
  tied_to  for a tensor that shares its storage with an earlier one (tied weights), the
           name of that earlier tensor, the one a checkpoint keeps

`eoi spec --from` proposes only the linear and conv weights as layers.

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
from torch import nn

NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def module_kind(module: nn.Module) -> str:
    """What eoi makes of a module's `weight`: see the module docstring."""
    if isinstance(module, (nn.modules.conv._ConvNd,)):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    # transformers' Conv1D (GPT-2): a linear layer whose weight is stored (in, out).
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers"):
        return "linear"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, NORMS) or "Norm" in type(module).__name__:
        return "norm"
    return "other"


def kind_of(module: nn.Module, leaf: str, is_buffer: bool) -> str:
    """The kind of the tensor `leaf` (its last name part) of `module`."""
    if is_buffer:
        return "buffer"
    kind = module_kind(module)
    if kind == "norm":
        return "norm"
    if isinstance(module, nn.MultiheadAttention) and leaf == "in_proj_weight":
        return "linear"
    if leaf == "weight" and kind != "other":
        return kind
    if leaf.endswith("bias"):
        return "bias"
    return "other"


def shapes(model: nn.Module) -> list:
    """The JSON shape list of `model`: its state_dict() names and shapes, in order."""
    modules = dict(model.named_modules(remove_duplicate=False))
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}
    # Tied parameters are one object under several names: the first name holds the storage.
    first = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(parameter), name)
    tied = {
        name: first[id(parameter)]
        for name, parameter in model.named_parameters(remove_duplicate=False)
        if first[id(parameter)] != name
    }
    entries = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner, model)
        entry = {
            "name": name,
            "shape": list(tensor.shape),
            "module": type(module).__name__,
            "kind": kind_of(module, leaf, name in buffers),
        }
        if isinstance(module, nn.modules.conv._ConvNd) and leaf == "weight":
            entry["groups"] = module.groups
        if name in tied:
            entry["tied_to"] = tied[name]
        entries.append(entry)
    return entries


def checkpoint(model: nn.Module) -> dict:
    """The tensors a checkpoint of `model` holds: its state_dict() with one name per storage
    (the first), contiguous, as save_pretrained and safetensors' save_model write them."""
    tied = {e["name"] for e in shapes(model) if "tied_to" in e}
    return {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if k not in tied
    }


def save(model: nn.Module, path: str) -> None:
    """Write `model` to `path` as the base checkpoint `eoi generate --base` completes: its
    checkpoint() tensors with safetensors, marked as PyTorch's ("format": "pt")."""
    from safetensors.torch import save_file

    save_file(checkpoint(model), path, metadata={"format": "pt"})


def build(factory_path: str, device: str) -> nn.Module:
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
        help="also write the model (built on the CPU) to FILE as safetensors, one tensor per storage",
    )
    args = parser.parse_args()
    model = build(args.model, "cpu" if args.save else "meta")
    if args.save:
        save(model, args.save)
    json.dump(shapes(model), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
