"""Loading an eoi artifact into a PyTorch `nn.Module`, with its masked weights held at zero
during training.

`apply(model, artifact)` copies every tensor of the artifact into the parameter or buffer
of the same name (weights, biases, and with `--base` every other tensor), after checking
every name and shape, and then keeps each layer's mask in one of two ways:

- `masks="prune"` (the default): `torch.nn.utils.prune.custom_from_mask`, so the module
  gets `weight_orig` (the trained parameter) and `weight_mask` (a buffer), and `weight`
  is recomputed as their product before every forward. The state dict holds both, as
  torch users expect of a pruned model; `prune.remove(module, "weight")` makes it
  permanent after training.
- `masks="hook"`: no re-parametrisation. A gradient hook multiplies each masked weight's
  gradient by its mask, and the mask is kept as a non-persistent buffer `weight_eoi_mask`
  (it follows `model.to(device)` and is not in the state dict). With the gradients masked,
  SGD (momentum, weight decay), Adam and AdamW leave a zero weight at zero; for any other
  update (a custom optimizer, noise, EMA) `register_step_hook(optimizer, model)` zeroes the
  masked weights again after every `optimizer.step()`, and `zero_masked(model)` does it by
  hand.

Create the optimizer after `apply` (with `prune`, the parameter it trains is
`weight_orig`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from eoi._artifact import Artifact, load, parameters, to_torch

__all__ = ["Report", "apply", "register_step_hook", "zero_masked"]

#: The suffix of the mask buffer `masks="hook"` gives a module, after the parameter's name.
HOOK_MASK_SUFFIX = "_eoi_mask"


@dataclass(frozen=True)
class Report:
    """What `apply` did. `loaded`: the model's parameters and buffers it wrote; `masked`:
    the parameters whose masked weights it holds at zero (a subset of `loaded`);
    `untouched`: the model's parameters and buffers the artifact has nothing for;
    `missing`: the artifact's tensors the model has no parameter or buffer for (only with
    `strict=False`; `strict=True` refuses them)."""

    loaded: tuple[str, ...]
    masked: tuple[str, ...]
    untouched: tuple[str, ...]
    missing: tuple[str, ...]
    masks: Literal["prune", "hook"]

    def __str__(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors into the model ({len(self.masked)} masked, "
            f"by {self.masks}); {len(self.untouched)} of the model's left untouched; "
            f"{len(self.missing)} of the artifact's with no place in the model"
        )


def apply(
    model: nn.Module,
    artifact: Artifact,
    *,
    strict: bool = True,
    masks: Literal["prune", "hook"] = "prune",
) -> Report:
    """Loads `artifact` into `model` by name and keeps its masked weights at zero.

    `artifact` is a path to eoi's safetensors output (a file, either file of a `--masks`
    pair, a sharded or `--base` directory) or what `eoi.generate` returned. Every tensor
    goes to the parameter or buffer of the same name (torch-prune names load as the
    parameter they prune; a Flax-layout artifact's layers are transposed to PyTorch's
    order), converted to its dtype and device. Every shape must match. With `strict=True`
    (the default) every tensor of the artifact must find its place in the model; the
    model's other parameters (biases and norms eoi did not make, say) are left as they are
    and listed in the report's `untouched`. Nothing is changed unless everything fits:
    ValueError lists every problem.

    `masks` chooses how the masked weights stay at zero during training: `"prune"`
    (torch.nn.utils.prune, `weight_orig` and `weight_mask`) or `"hook"` (masked gradients;
    see the module's documentation and `register_step_hook`).

    >>> import eoi, eoi.torch, torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    >>> spec = {"seed": 1, "sparsity": {"density": 0.25},
    ...         "layer": [{"name": "0.weight", "shape": [32, 16]}, {"name": "2.weight", "shape": [10, 32]}]}
    >>> report = eoi.torch.apply(model, eoi.generate(spec))
    >>> report.masked, report.untouched
    (('0.weight', '2.weight'), ('0.bias', '2.bias'))
    >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    >>> for _ in range(3):
    ...     optimizer.zero_grad()
    ...     model(torch.randn(8, 16)).square().mean().backward()
    ...     optimizer.step()
    >>> bool((model[0].weight[model[0].weight_mask == 0] == 0).all())
    True
    """
    if masks not in ("prune", "hook"):
        raise ValueError(f"masks={masks!r}: use 'prune' or 'hook'")
    found, layout = parameters(load(artifact))
    targets: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    targets.update(model.named_buffers(remove_duplicate=False))

    problems: list[str] = []
    missing: list[str] = []
    plan: list[tuple[str, torch.Tensor, np.ndarray, np.ndarray | None]] = []
    for p in found:
        value, mask = p.value, p.mask
        if mask is not None and layout == "flax":
            value, mask = to_torch(value), to_torch(mask)
        target = targets.get(p.name)
        if target is None:
            if p.name + "_orig" in targets:
                problems.append(f"{p.name}: the model's parameter is already pruned ({p.name}_orig); apply eoi before pruning, or prune.remove it first")
            else:
                missing.append(p.name)
            continue
        if tuple(target.shape) != value.shape:
            problems.append(f"{p.name}: the artifact's tensor has shape {list(value.shape)}, the model's {list(target.shape)}")
            continue
        if mask is not None and not isinstance(target, nn.Parameter):
            problems.append(f"{p.name}: a masked layer, but the model's {p.name} is a buffer, not a parameter")
            continue
        plan.append((p.name, target, value, mask))
    if strict and missing:
        problems.append(f"the model has no parameter or buffer named {_names(missing)} (strict=False loads the rest)")
    if problems:
        raise ValueError("eoi.torch.apply: the artifact does not fit the model, nothing was loaded:\n  " + "\n  ".join(problems))

    with torch.no_grad():
        for _, target, value, _ in plan:
            target.copy_(_tensor(value))
    for name, target, _, mask in plan:
        if mask is not None:
            module_name, _, param_name = name.rpartition(".")
            module = model.get_submodule(module_name)
            mask_tensor = torch.from_numpy(np.ascontiguousarray(mask)).to(target.device)
            if masks == "prune":
                prune.custom_from_mask(module, param_name, mask_tensor)
            else:
                _hook(module, param_name, target, mask_tensor)

    loaded = tuple(name for name, *_ in plan)
    written = set(loaded)
    return Report(
        loaded=loaded,
        masked=tuple(name for name, _, _, mask in plan if mask is not None),
        untouched=tuple(name for name in targets if name not in written),
        missing=tuple(missing),
        masks=masks,
    )


def zero_masked(model: nn.Module) -> int:
    """Sets every weight outside its mask to zero again, in place, for the masks
    `apply(..., masks="hook")` gave the model; returns how many parameters it masked.
    (With `masks="prune"`, PyTorch recomputes the weight from its mask at every forward.)

    >>> import eoi, eoi.torch, torch
    >>> model = torch.nn.Linear(8, 8, bias=False)
    >>> _ = eoi.torch.apply(model, eoi.generate({"seed": 1, "sparsity": {"density": 0.25},
    ...                     "layer": [{"name": "weight", "shape": [8, 8]}]}), masks="hook")
    >>> with torch.no_grad():
    ...     _ = model.weight.add_(1.0)   # an update the gradient hook did not see
    >>> eoi.torch.zero_masked(model), int((model.weight == 0).sum()) == int((model.weight_eoi_mask == 0).sum())
    (1, True)
    """
    count = 0
    with torch.no_grad():
        for param, mask in _hooked(model):
            param.mul_(mask.to(param.dtype))
            count += 1
    return count


def register_step_hook(optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
    """Calls `zero_masked(model)` after every `optimizer.step()` (PyTorch's step post-hook);
    returns the handle, whose `.remove()` undoes it.

    >>> import eoi, eoi.torch, torch
    >>> model = torch.nn.Linear(8, 8, bias=False)
    >>> _ = eoi.torch.apply(model, eoi.generate({"seed": 1, "sparsity": {"density": 0.25},
    ...                     "layer": [{"name": "weight", "shape": [8, 8]}]}), masks="hook")
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> handle = eoi.torch.register_step_hook(optimizer, model)
    >>> model.weight.grad = torch.ones(8, 8)   # a gradient that bypassed the hook
    >>> optimizer.step()
    >>> bool((model.weight[model.weight_eoi_mask == 0] == 0).all())
    True
    """
    return optimizer.register_step_post_hook(lambda *_: zero_masked(model))


def _hook(module: nn.Module, name: str, param: torch.Tensor, mask: torch.Tensor) -> None:
    """Masks `module.<name>` with `mask`: a non-persistent buffer, a gradient hook, and the
    weight zeroed outside the mask now."""
    buffer = name + HOOK_MASK_SUFFIX
    module.register_buffer(buffer, mask, persistent=False)

    def masked_gradient(grad: torch.Tensor) -> torch.Tensor:
        current: torch.Tensor = getattr(module, buffer)
        return grad * current.to(device=grad.device, dtype=grad.dtype)

    param.register_hook(masked_gradient)
    with torch.no_grad():
        param.mul_(mask.to(param.dtype))


def _hooked(model: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every (parameter, mask) pair that `masks="hook"` made in `model`."""
    for module in model.modules():
        for buffer_name, mask in module.named_buffers(recurse=False):
            if buffer_name.endswith(HOOK_MASK_SUFFIX):
                param = getattr(module, buffer_name[: -len(HOOK_MASK_SUFFIX)], None)
                if isinstance(param, torch.Tensor):
                    yield param, mask


def _tensor(value: np.ndarray) -> torch.Tensor:
    """A CPU tensor of a NumPy array; bfloat16 (ml_dtypes) arrays through their bits."""
    if value.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(value).view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(value))


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")
