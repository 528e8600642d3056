"""Loading an eoi artifact into a Flax parameter tree (linen or nnx), with the masks for
`eoi.optax.masked`.

Each leaf of the tree is named by its path joined with dots (`Dense_0.kernel`,
`layers.0.kernel`; an nnx `Variable`'s `.value` is not part of the name), and takes the
artifact's tensor of that name; a `kernel` also takes the tensor named like PyTorch's
weight of its module (`layers.0.weight`), which is how a spec written for a PyTorch model
names it. A layer stored in PyTorch's layout (eoi's default) is transposed to Flax's on
load, (out, in, k...) to (k..., in, out); one generated with `--layout flax` is taken as it
is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from eoi._artifact import Artifact, load, parameters, to_flax

__all__ = ["apply", "leaf_name"]

Params = TypeVar("Params")


def apply(params: Params, artifact: Artifact, *, strict: bool = True) -> tuple[Params, dict[str, Any]]:
    """Returns `params` with the artifact's tensors in place, and the masks of its layers.

    `params` is a Flax parameter tree: linen's `variables["params"]` (a dict or FrozenDict)
    or nnx's `nnx.state(model, nnx.Param)`; the result has its structure, types and dtypes
    (values cast to each leaf's dtype), so for nnx `nnx.update(model, params)` puts it into
    the model. `artifact` is a path to eoi's safetensors output or what `eoi.generate`
    returned (see `eoi.Artifact`). Every shape must match; with `strict=True` (the
    default) every tensor of the artifact must find its leaf. Leaves the artifact has
    nothing for keep their values. ValueError lists every problem.

    `masks` is a nested dict with the tree's keys holding, for each masked leaf only, its
    mask (a bool array of the leaf's shape): give it to `eoi.optax.masked` so that no
    update revives a masked weight.

    >>> import eoi, eoi.flax, eoi.optax, jax, jax.numpy as jnp, optax
    >>> import flax.linen as nn
    >>> class MLP(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(10, name="fc2")(jnp.tanh(nn.Dense(32, name="fc1")(x)))
    >>> model = MLP()
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 16)))["params"]
    >>> spec = {"seed": 1, "sparsity": {"density": 0.25},
    ...         "layer": [{"name": "fc1.weight", "shape": [32, 16]}, {"name": "fc2.weight", "shape": [10, 32]}]}
    >>> params, masks = eoi.flax.apply(params, eoi.generate(spec))
    >>> sorted(masks), masks["fc1"]["kernel"].shape
    (['fc1', 'fc2'], (16, 32))
    >>> tx = eoi.optax.masked(optax.adamw(1e-2), masks)
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: model.apply({"params": p}, jnp.ones((4, 16))).sum())(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> bool((params["fc1"]["kernel"][~masks["fc1"]["kernel"]] == 0).all())
    True
    """
    found, layout = parameters(load(artifact))
    by_name = {p.name: p for p in found}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)

    problems: list[str] = []
    used: set[str] = set()
    new_leaves: list[Any] = []
    masks: dict[Any, Any] = {}
    for path, leaf in leaves:
        name = leaf_name(path)
        p = by_name.get(name)
        if p is None and name.endswith(".kernel"):
            p = by_name.get(name[: -len("kernel")] + "weight")
        if p is None or p.name in used:
            new_leaves.append(leaf)
            continue
        used.add(p.name)
        value, mask = p.value, p.mask
        if mask is not None and layout == "torch":
            value, mask = to_flax(value), to_flax(mask)
        shape = tuple(np.shape(leaf))
        if value.shape != shape:
            problems.append(f"{name}: the artifact's {p.name} has shape {list(value.shape)} in Flax's layout, the tree's leaf {list(shape)}")
            new_leaves.append(leaf)
            continue
        new_leaves.append(jnp.asarray(value, dtype=getattr(leaf, "dtype", None)))
        if mask is not None:
            _put(masks, _keys(path), jnp.asarray(mask))
    unused = [p.name for p in found if p.name not in used]
    if strict and unused:
        hint = ""
        if any(leaf_name(path).startswith("params.") for path, _ in leaves):
            hint = " (the tree starts with 'params': pass variables['params'])"
        problems.append(f"no leaf of the tree is named {', '.join(unused[:8])}{' and more' if len(unused) > 8 else ''}{hint}; strict=False loads the rest")
    if problems:
        raise ValueError("eoi.flax.apply: the artifact does not fit the parameter tree:\n  " + "\n  ".join(problems))
    return jax.tree_util.tree_unflatten(treedef, new_leaves), masks


def leaf_name(path: Sequence[Any]) -> str:
    """The dotted name of a tree leaf's key path (from `jax.tree_util.tree_flatten_with_path`),
    as `apply` matches it with the artifact's names.

    >>> import jax
    >>> [leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path({"Dense_0": {"kernel": 1}, "layers": [2]})[0]]
    ['Dense_0.kernel', 'layers.0']
    """
    return ".".join(str(key) for key in _keys(path))


def _keys(path: Sequence[Any]) -> list[Any]:
    """The keys of a key path, without the `.value` of an nnx Variable."""
    keys: list[Any] = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            keys.append(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            keys.append(entry.idx)
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            if entry.name != "value":
                keys.append(entry.name)
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            keys.append(entry.key)
        else:
            keys.append(str(entry))
    return keys


def _put(tree: dict[Any, Any], keys: list[Any], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value
