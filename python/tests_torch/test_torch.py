"""eoi.torch against the installed package and binary, with PyTorch: strict loading into a
small MLP and a small CNN, both mask modes keeping masked weights exactly zero through SGD
(momentum, weight decay), Adam and AdamW steps while the kept weights train, and the
refusals. PyTorch is too large for CI: run by hand (docs/python.md, "Tests"):

    pip install '.[test]' torch && pytest python/tests_torch
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import eoi
import eoi.torch

REPO = Path(os.environ.get("EOI_REPO") or Path(__file__).resolve().parents[2])

# The package suite's two specs (python/tests/conftest.py), so both suites test the same
# layers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import CNN as CNN_SPEC, MLP as MLP_SPEC  # noqa: E402


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.head = nn.Linear(16, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv2(torch.tanh(self.bn(self.conv1(x)))))
        return self.head(x.mean(dim=(2, 3)))


MODELS: dict[str, tuple[Callable[[], nn.Module], str, tuple[int, ...], list[str]]] = {
    "mlp": (MLP, MLP_SPEC, (16, 16), ["fc1.weight", "fc2.weight", "fc3.weight"]),
    "cnn": (CNN, CNN_SPEC, (8, 3, 8, 8), ["conv1.weight", "conv2.weight", "head.weight"]),
}

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight the forward pass uses (for prune, weight_orig * weight_mask)."""
    return model.get_submodule(name.rpartition(".")[0]).weight.detach()


def train(model: nn.Module, optimizer: torch.optim.Optimizer, shape: tuple[int, ...], steps: int = 5) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(*shape), torch.randint(0, 10, (shape[0],))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("masks", ["prune", "hook"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_masked_weights_stay_exactly_zero_and_the_kept_ones_train(kind: str, optimizer: str, masks: str) -> None:
    make, spec, shape, layers = MODELS[kind]
    torch.manual_seed(0)
    model = make()
    artifact = eoi.generate(spec)
    report = eoi.torch.apply(model, artifact, masks=masks)  # type: ignore[arg-type]
    assert report.masked == tuple(layers) and not report.missing
    for name in layers:
        assert torch.equal(weight(model, name), torch.from_numpy(artifact[name])), name
    if masks == "prune":
        assert all(f"{n}_orig" in model.state_dict() and f"{n}_mask" in model.state_dict() for n in layers)
    else:
        assert sorted(model.state_dict()) == sorted(dict(make().state_dict()))  # no new keys
    before = {n: weight(model, n).clone() for n in layers}
    opt = OPTIMIZERS[optimizer](list(model.parameters()))
    if masks == "hook":
        eoi.torch.register_step_hook(opt, model)
    train(model, opt, shape)
    for name in layers:
        kept = torch.from_numpy(artifact[f"{name}_mask"])
        w = weight(model, name)
        assert not w[~kept].any(), f"{name}: a masked weight moved off zero"
        assert (w != before[name])[kept].float().mean() > 0.9, f"{name}: the kept weights did not train"


@pytest.mark.parametrize("masks", ["prune", "hook"])
def test_without_the_hook_helper_the_gradient_hook_alone_keeps_zeros_for_sgd_and_adam(masks: str) -> None:
    for optimizer in ("sgd", "adam"):
        model = MLP()
        artifact = eoi.generate(MLP_SPEC)
        eoi.torch.apply(model, artifact, masks=masks)  # type: ignore[arg-type]
        train(model, OPTIMIZERS[optimizer](list(model.parameters())), (16, 16))
        for name in ["fc1.weight", "fc2.weight"]:
            assert not weight(model, name)[~torch.from_numpy(artifact[f"{name}_mask"])].any()


def test_plain_loading_without_masks_lets_masked_weights_move() -> None:
    # The property above can fail: a state-dict load with no mask loses the zeros in one step.
    model = MLP()
    artifact = eoi.generate(MLP_SPEC)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in artifact.items() if not k.endswith("_mask")})
    train(model, OPTIMIZERS["sgd"](list(model.parameters())), (16, 16), steps=1)
    assert weight(model, "fc1.weight")[~torch.from_numpy(artifact["fc1.weight_mask"])].any()


def test_the_report_lists_loaded_untouched_and_missing() -> None:
    model = CNN()
    report = eoi.torch.apply(model, eoi.generate(CNN_SPEC))
    assert report.loaded == ("conv1.weight", "conv2.weight", "head.weight")
    assert report.untouched == ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
    assert report.missing == () and report.masks == "prune"
    assert str(report) == "loaded 3 tensors into the model (3 masked, by prune); 5 of the model's left untouched; 0 of the artifact's with no place in the model"


def test_strict_refuses_tensors_the_model_lacks_and_wrong_shapes_changing_nothing() -> None:
    model = MLP()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    extra = MLP_SPEC + '[[layer]]\nname = "fc4.weight"\nshape = [10, 10]\n'
    with pytest.raises(ValueError, match=r"the model has no parameter or buffer named fc4.weight, fc4.bias \(strict=False loads the rest\)"):
        eoi.torch.apply(model, eoi.generate(extra))
    wrong = MLP_SPEC.replace('name = "fc2.weight"\nshape = [32, 32]', 'name = "fc2.weight"\nshape = [32, 16]')
    with pytest.raises(ValueError, match=r"fc2.weight: the artifact's tensor has shape \[32, 16\], the model's \[32, 32\]"):
        eoi.torch.apply(model, eoi.generate(wrong))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items()), "a refused apply changed the model"
    assert not hasattr(model.fc1, "weight_orig")
    report = eoi.torch.apply(model, eoi.generate(extra), strict=False)
    assert report.missing == ("fc4.weight", "fc4.bias") and len(report.loaded) == 6
    with pytest.raises(ValueError, match="fc1.weight: the model's parameter is already pruned"):
        eoi.torch.apply(model, eoi.generate(MLP_SPEC))


def test_every_form_of_artifact_loads_the_same_weights(tmp_path: Path) -> None:
    spec = tmp_path / "cnn.toml"
    spec.write_text(CNN_SPEC)
    eoi.run("generate", spec, "-o", tmp_path / "plain.safetensors")
    eoi.run("generate", spec, "-o", tmp_path / "w.safetensors", "--masks", tmp_path / "m.safetensors")
    eoi.run("generate", spec, "-o", tmp_path / "prune.safetensors", "--names", "torch-prune")
    eoi.run("generate", spec, "-o", tmp_path / "flax.safetensors", "--layout", "flax")
    eoi.run("generate", spec, "-o", tmp_path / "shards", "--max-shard-size", "1KB")
    reference = CNN()
    eoi.torch.apply(reference, tmp_path / "plain.safetensors")
    sources = ["w.safetensors", "m.safetensors", "prune.safetensors", "flax.safetensors", "shards", "shards/model.safetensors.index.json"]
    for source in sources:
        model = CNN()
        report = eoi.torch.apply(model, tmp_path / source)
        assert report.masked == ("conv1.weight", "conv2.weight", "head.weight"), source
        for name in report.masked:
            assert torch.equal(weight(model, name), weight(reference, name)), (source, name)
            module = model.get_submodule(name.rpartition(".")[0])
            assert torch.equal(module.weight_mask, reference.get_submodule(name.rpartition(".")[0]).weight_mask), (source, name)


def test_bf16_and_f64_artifacts_are_converted_to_the_parameters_dtype() -> None:
    for dtype, model_dtype in (("bf16", torch.float32), ("f64", torch.float32), ("bf16", torch.bfloat16)):
        model = MLP().to(model_dtype)
        artifact = eoi.generate(MLP_SPEC, dtype=dtype)  # type: ignore[arg-type]
        eoi.torch.apply(model, artifact, masks="hook")
        w = artifact["fc2.weight"]
        expected = torch.from_numpy(w.view(np.uint16)).view(torch.bfloat16) if dtype == "bf16" else torch.from_numpy(w)
        assert model.fc2.weight.dtype == model_dtype
        assert torch.equal(model.fc2.weight.detach(), expected.to(model_dtype))
        if model_dtype == torch.float32:
            train(model, OPTIMIZERS["adamw"](list(model.parameters())), (16, 16), steps=2)
        assert not model.fc2.weight.detach()[~torch.from_numpy(artifact["fc2.weight_mask"])].any()


def test_zero_masked_and_the_step_hook_undo_an_update_that_bypassed_the_gradients() -> None:
    model = MLP()
    eoi.torch.apply(model, eoi.generate(MLP_SPEC), masks="hook")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = eoi.torch.register_step_hook(optimizer, model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # as if a gradient had been set by hand
    optimizer.step()
    assert not model.fc1.weight.detach()[model.fc1.weight_eoi_mask == 0].any()
    handle.remove()
    optimizer.step()
    assert model.fc1.weight.detach()[model.fc1.weight_eoi_mask == 0].any()
    assert eoi.torch.zero_masked(model) == 3
    assert not model.fc1.weight.detach()[model.fc1.weight_eoi_mask == 0].any()


def test_docstring_examples_run() -> None:
    result = doctest.testmod(eoi.torch, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_examples_load_torch_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, REPO / "examples" / "load_torch.py"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    prune: weights outside the masks are still exactly zero after 3 SGD steps" in done.stdout
    assert "ok    hook: weights outside the masks are still exactly zero after 3 SGD steps" in done.stdout
    assert "FAIL" not in done.stdout
