"""An optax transformation that never revives a masked weight: `masked(tx, masks)` with
the masks `eoi.flax.apply` returned.

Not `optax.masked`, which chooses the parameters a transformation applies to: this one
zeroes, element by element, the gradients `tx` sees and the updates it returns wherever a
mask is False.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from eoi.flax import leaf_name

__all__ = ["masked"]


def masked(tx: optax.GradientTransformation, masks: Any) -> optax.GradientTransformationExtraArgs:
    """`tx` with every gradient and every update multiplied by its mask.

    The gradients are masked before `tx` sees them (so clipping by global norm and the
    optimizer's moments see the sparse network's gradients) and the updates after (so
    weight decay and anything else in `tx` cannot move a masked weight off zero). `masks`
    is a tree whose leaves are bool arrays, matched with the parameter tree's leaves by
    name (`eoi.flax.leaf_name`), as `eoi.flax.apply` returns it; leaves without a mask are
    left alone. `init` and `update` raise ValueError if a mask finds no leaf of its shape
    in the tree they are given (masks of another tree: the mistake that would leave the
    masks silently unused).

    >>> import jax.numpy as jnp, optax, eoi.optax
    >>> masks = {"fc": {"kernel": jnp.array([[True, False], [False, True]])}}
    >>> params = {"fc": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}}
    >>> tx = eoi.optax.masked(optax.sgd(0.1), masks)
    >>> grads = {"fc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> (updates["fc"]["kernel"] != 0).tolist(), (updates["fc"]["bias"] != 0).tolist()
    ([[True, False], [False, True]], [True, True])
    """
    by_name = {leaf_name(path): mask for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0]}

    def apply_masks(tree: Any) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        names = [leaf_name(path) for path, _ in leaves]
        _check(names, [leaf for _, leaf in leaves])
        return jax.tree_util.tree_unflatten(
            treedef,
            [jnp.where(by_name[name], leaf, jnp.zeros((), leaf.dtype)) if name in by_name else leaf for name, (_, leaf) in zip(names, leaves)],
        )

    def _check(names: list[str], leaves: list[Any]) -> None:
        shapes = dict(zip(names, (jnp.shape(leaf) for leaf in leaves)))
        problems = [
            f"{name} (mask {list(jnp.shape(mask))}, leaf {list(shapes[name]) if name in shapes else 'missing'})"
            for name, mask in by_name.items()
            if shapes.get(name) != jnp.shape(mask)
        ]
        if problems:
            raise ValueError(
                "eoi.optax.masked: masks that match no leaf of the tree: " + ", ".join(problems[:8])
                + " (give it the masks eoi.flax.apply returned for this tree)"
            )

    def init(params: Any) -> Any:
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        _check([leaf_name(path) for path, _ in leaves], [leaf for _, leaf in leaves])
        return tx.init(params)

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        updates, state = optax.with_extra_args_support(tx).update(apply_masks(updates), state, params, **extra)
        return apply_masks(updates), state

    return optax.GradientTransformationExtraArgs(init, update)
