"""eoi.flax.apply and eoi.optax.masked: artifacts into linen and nnx parameter trees (the
torch layout transposed equals eoi's own Flax layout), and optax training that keeps every
masked weight exactly zero while the kept weights train."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import eoi
import eoi.flax
import eoi.optax
from conftest import CNN, MLP

jax.config.update("jax_platforms", "cpu")


class MLPLinen(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.tanh(nn.Dense(32, name="fc1")(x))
        x = jnp.tanh(nn.Dense(32, name="fc2")(x))
        return nn.Dense(10, name="fc3")(x)


class CNNLinen(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.tanh(nn.Conv(8, (3, 3), use_bias=False, name="conv1")(x))
        x = jnp.tanh(nn.Conv(16, (3, 3), use_bias=False, name="conv2")(x))
        return nn.Dense(10, use_bias=False, name="head")(x.mean(axis=(1, 2)))


class MLPNnx(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.fc1 = nnx.Linear(16, 32, rngs=rngs)
        self.fc2 = nnx.Linear(32, 32, rngs=rngs)
        self.fc3 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc3(jnp.tanh(self.fc2(jnp.tanh(self.fc1(x)))))


def outside(params: dict, masks: dict) -> float:
    """The largest |weight| where a mask is False, over every masked leaf."""
    worst = 0.0
    for layer, leaves in masks.items():
        for leaf, mask in leaves.items():
            worst = max(worst, float(jnp.max(jnp.abs(jnp.where(mask, 0.0, params[layer][leaf])))))
    return worst


def train(model: nn.Module, params: dict, tx: optax.GradientTransformation, x: jax.Array, steps: int) -> dict:
    labels = jnp.arange(x.shape[0]) % 10
    state = tx.init(params)

    @jax.jit
    def step(params: dict, state: optax.OptState) -> tuple[dict, optax.OptState]:
        def loss(p: dict) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), labels).mean()

        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params


def test_linen_mlp_takes_the_torch_layout_transposed_as_eoi_writes_the_flax_layout() -> None:
    model = MLPLinen()
    params = model.init(jax.random.key(0), jnp.ones((1, 16)))["params"]
    torch_layout = eoi.generate(MLP)
    from_torch, masks = eoi.flax.apply(params, torch_layout)
    from_flax, flax_masks = eoi.flax.apply(params, eoi.generate(MLP, layout="flax"))
    assert jax.tree.structure(from_torch) == jax.tree.structure(params)
    for layer in ["fc1", "fc2", "fc3"]:
        for leaf in ["kernel", "bias"]:
            assert np.array_equal(from_torch[layer][leaf], from_flax[layer][leaf]), (layer, leaf)
            assert from_torch[layer][leaf].dtype == params[layer][leaf].dtype
        assert np.array_equal(from_torch[layer]["kernel"], torch_layout[f"{layer}.weight"].T)
        assert np.array_equal(from_torch[layer]["bias"], torch_layout[f"{layer}.bias"])
        assert np.array_equal(masks[layer]["kernel"], torch_layout[f"{layer}.weight_mask"].T)
        assert np.array_equal(masks[layer]["kernel"], flax_masks[layer]["kernel"])
        assert masks[layer]["kernel"].dtype == jnp.bool_
        assert sorted(masks[layer]) == ["kernel"]
    assert outside(from_torch, masks) == 0.0


def test_linen_cnn_convolutions_are_laid_out_as_flax_keeps_them() -> None:
    model = CNNLinen()
    params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))["params"]
    from_torch, masks = eoi.flax.apply(params, eoi.generate(CNN))
    from_flax, _ = eoi.flax.apply(params, eoi.generate(CNN, layout="flax"))
    assert from_torch["conv1"]["kernel"].shape == (3, 3, 3, 8)
    for layer in ["conv1", "conv2", "head"]:
        assert np.array_equal(from_torch[layer]["kernel"], from_flax[layer]["kernel"]), layer
    # A 3x3 EOI convolution is orthogonal at its centre tap, (in, out) in Flax's layout.
    centre = np.asarray(from_torch["conv2"]["kernel"][1, 1])
    assert centre.shape == (8, 16) and np.allclose(centre @ centre.T, np.eye(8), atol=1e-5)
    trained = train(model, from_torch, eoi.optax.masked(optax.adamw(1e-2, weight_decay=0.1), masks), jnp.ones((4, 8, 8, 3)), 4)
    assert outside(trained, masks) == 0.0


@pytest.mark.parametrize(
    "optimizer",
    [
        optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9)),
        optax.adam(1e-2),
        optax.adamw(1e-2, weight_decay=0.1),
        optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
    ],
    ids=["sgd-momentum-decay", "adam", "adamw", "clipped-adamw"],
)
def test_masked_optax_steps_keep_masked_weights_exactly_zero_and_train_the_rest(optimizer: optax.GradientTransformation) -> None:
    model = MLPLinen()
    x = jax.random.normal(jax.random.key(1), (16, 16))
    params, masks = eoi.flax.apply(model.init(jax.random.key(0), x)["params"], eoi.generate(MLP))
    trained = train(model, params, eoi.optax.masked(optimizer, masks), x, 5)
    assert outside(trained, masks) == 0.0
    for layer in ["fc1", "fc2", "fc3"]:
        kept = np.asarray(masks[layer]["kernel"])
        moved = np.asarray(trained[layer]["kernel"] != params[layer]["kernel"])
        assert moved[kept].mean() > 0.9, layer
        assert not moved[~kept].any(), layer
    # Without eoi.optax.masked the same steps do move masked weights: the check has teeth.
    unmasked = train(model, params, optimizer, x, 5)
    assert outside(unmasked, masks) > 0.0


def test_nnx_state_loads_and_trains_with_nnx_optimizer() -> None:
    model = MLPNnx(nnx.Rngs(0))
    t = eoi.generate(MLP)
    state, masks = eoi.flax.apply(nnx.state(model, nnx.Param), t)
    nnx.update(model, state)
    assert np.array_equal(model.fc2.kernel[...], t["fc2.weight"].T)
    assert np.array_equal(model.fc2.bias[...], t["fc2.bias"])
    assert sorted(masks) == ["fc1", "fc2", "fc3"]

    optimizer = nnx.Optimizer(model, eoi.optax.masked(optax.adamw(1e-2, weight_decay=0.1), masks), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (16, 16))
    labels = jnp.arange(16) % 10
    before = np.asarray(model.fc2.kernel[...])

    @nnx.jit
    def step(model: MLPNnx, optimizer: nnx.Optimizer) -> None:
        def loss(m: MLPNnx) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()

        optimizer.update(model, nnx.grad(loss)(model))

    for _ in range(5):
        step(model, optimizer)
    for name in ["fc1", "fc2", "fc3"]:
        kernel = getattr(model, name).kernel[...]
        assert not np.asarray(kernel)[~np.asarray(masks[name]["kernel"])].any(), name
    kept = np.asarray(masks["fc2"]["kernel"])
    assert (np.asarray(model.fc2.kernel[...]) != before)[kept].mean() > 0.9


def test_names_and_shapes_that_do_not_fit_are_refused_with_every_problem() -> None:
    model = MLPLinen()
    params = model.init(jax.random.key(0), jnp.ones((1, 16)))["params"]
    extra = MLP + '\n[[layer]]\nname = "fc4.weight"\nshape = [10, 10]\n'
    with pytest.raises(ValueError, match="no leaf of the tree is named fc4.weight, fc4.bias; strict=False loads the rest"):
        eoi.flax.apply(params, eoi.generate(extra))
    loaded, masks = eoi.flax.apply(params, eoi.generate(extra), strict=False)
    assert sorted(masks) == ["fc1", "fc2", "fc3"]
    wrong = MLP.replace('name = "fc2.weight"\nshape = [32, 32]', 'name = "fc2.weight"\nshape = [32, 16]')
    with pytest.raises(ValueError, match=r"fc2.kernel: the artifact's fc2.weight has shape \[16, 32\] in Flax's layout, the tree's leaf \[32, 32\]"):
        eoi.flax.apply(params, eoi.generate(wrong))
    with pytest.raises(ValueError, match="pass variables\\['params'\\]"):
        eoi.flax.apply({"params": params}, eoi.generate(MLP))


def test_masks_of_another_tree_are_refused_not_silently_ignored() -> None:
    model = MLPLinen()
    params, masks = eoi.flax.apply(model.init(jax.random.key(0), jnp.ones((1, 16)))["params"], eoi.generate(MLP))
    tx = eoi.optax.masked(optax.sgd(0.1), {"params": masks})
    with pytest.raises(ValueError, match=r"masks that match no leaf of the tree: params.fc1.kernel \(mask \[16, 32\], leaf missing\)"):
        tx.init(params)
