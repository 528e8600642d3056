#!/usr/bin/env python3
"""Load an eoi artifact into a PyTorch model and train it with its masks held fixed.

Builds a PyTorch MLP from a spec in specs/ (an nn.Linear at every layer's module path,
tanh between them, so the state-dict keys are the spec's layer names), generates the
spec's initialization with eoi twice and loads both with the official
`safetensors.torch` loader:

  * plain names (X, X_mask): the weights go in with load_state_dict(strict=True); the masks
    are applied to the gradients by a hook, so SGD with momentum and weight decay keeps the
    pruned weights at zero;
  * torch-prune names (--names torch-prune: <module>.weight_orig, <module>.weight_mask):
    torch.nn.utils.prune.identity(module, "weight") on every layer, then
    load_state_dict(strict=True) takes the file as it is, and PyTorch's pruning keeps
    weight = weight_orig * weight_mask.

A layer whose artifact has `<module>.bias` (the spec sets `bias_std`) gets an nn.Linear with
a bias, loaded from the file; the others have none, so strict loading takes every tensor.
Both models compute the same function, and after a few optimizer steps every weight outside
its mask is still exactly zero.

    python examples/load_torch.py                       # specs/mlp-mnist.toml
    python examples/load_torch.py --spec specs/mlp-1000-tanh.toml --eoi target/release/eoi

Needs torch, numpy and safetensors (PyTorch is too large for the project's CI: this example
is run by hand), and the eoi binary (--eoi, default $EOI or `eoi` on the PATH). Exits 1 if
any check fails.
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

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import prune

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def layers_of(spec_path):
    """The spec's layers in order as (module path, out, in), `repeat` expanded."""
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
    """nn.Linear modules at the spec's module paths (net.0, hidden.7, ...), applied in the
    spec's order with tanh between them."""

    def __init__(self, layers, biases):
        super().__init__()
        self.paths = [path for path, _, _ in layers]
        for path, out, inp in layers:
            parent = self
            *parents, leaf = path.split(".")
            for part in parents:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, nn.Linear(inp, out, bias=path in biases))

    def linears(self):
        return [self.get_submodule(path) for path in self.paths]

    def forward(self, x):
        linears = self.linears()
        for k, linear in enumerate(linears):
            x = linear(x)
            if k + 1 < len(linears):
                x = torch.tanh(x)
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


def train(model, steps, x, y):
    """A few steps of SGD with momentum and weight decay."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for k in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        print(f"      step {k + 1}: loss {loss.item():.4f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=os.path.join(ROOT, "specs", "mlp-mnist.toml"))
    p.add_argument("--eoi", default=os.environ.get("EOI", "eoi"))
    p.add_argument("--steps", type=int, default=3, help="optimizer steps to take")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    layers = layers_of(args.spec)
    with tempfile.TemporaryDirectory(prefix="eoi-load-torch-") as tmp:
        plain_file = os.path.join(tmp, "init.safetensors")
        prune_file = os.path.join(tmp, "init-prune.safetensors")
        generate(args.eoi, args.spec, plain_file)
        generate(args.eoi, args.spec, prune_file, "--names", "torch-prune")
        plain = load_file(plain_file)
        pruned = load_file(prune_file)
    biases = {path for path, _, _ in layers if f"{path}.bias" in plain}
    x = torch.randn(32, layers[0][2])
    y = torch.randint(0, layers[-1][1], (32,))

    # 1. Plain names: weights by load_state_dict(strict=True), masks on the gradients.
    model = MLP(layers, biases)
    masks = {f"{path}.weight": plain.pop(f"{path}.weight_mask") for path, _, _ in layers}
    model.load_state_dict(plain, strict=True)
    check(True, f"plain names: load_state_dict(strict=True) took all {len(plain)} weights and biases ({len(biases)} biases)")
    for path, _, _ in layers:
        weight = model.get_submodule(path).weight
        mask = masks[f"{path}.weight"].to(weight.dtype)
        weight.register_hook(lambda grad, mask=mask: grad * mask)

    def outside(m):
        """The largest |weight| outside the masks (of weight_orig * weight_mask once pruned)."""
        worst = 0.0
        for path, linear in zip(m.paths, m.linears()):
            w = linear.weight_orig * linear.weight_mask if hasattr(linear, "weight_orig") else linear.weight
            pruned_away = w.detach()[masks[f"{path}.weight"] == 0]
            if pruned_away.numel():
                worst = max(worst, float(pruned_away.abs().max()))
        return worst

    check(outside(model) == 0.0, "weights outside the masks start at zero")
    before = [lin.weight.detach().clone() for lin in model.linears()]

    # 2. torch-prune names: prune.identity, then the file as it is.
    pruned_model = MLP(layers, biases)
    for linear in pruned_model.linears():
        prune.identity(linear, "weight")
    pruned_model.load_state_dict(pruned, strict=True)
    check(True, f"torch-prune names: prune.identity + load_state_dict(strict=True) took all {len(pruned)} tensors")
    with torch.no_grad():
        same = torch.equal(model(x), pruned_model(x))
    check(same, "both models compute the same function")

    train(model, args.steps, x, y)
    check(outside(model) == 0.0, f"plain: weights outside the masks are still exactly zero after {args.steps} SGD steps")
    moved = sum(int((lin.weight.detach() != b).sum()) for lin, b in zip(model.linears(), before))
    kept = sum(int(m.sum()) for m in masks.values())
    check(moved > kept // 2, f"plain: the kept weights train ({moved} of {kept} changed)")

    train(pruned_model, args.steps, x, y)
    check(outside(pruned_model) == 0.0, f"torch-prune: weights outside the masks are still exactly zero after {args.steps} SGD steps")
    print(f"loaded {args.spec} into a {len(layers)}-layer PyTorch MLP, both ways, and trained it with fixed masks")


if __name__ == "__main__":
    main()
