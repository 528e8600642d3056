#!/usr/bin/env python3
"""Load an eoi artifact into a PyTorch model and train it with its masks held fixed.

Builds a PyTorch MLP from a spec in specs/ (an nn.Linear at every layer's module path,
tanh between them, so the parameter names are the spec's layer names; a bias where the
artifact has `<module>.bias`), and with the eoi package (docs/python.md) loads
eoi.generate(spec) into two copies of it:

  * eoi.torch.apply(model, artifact): strict, and the masks kept by
    torch.nn.utils.prune (`weight_orig`, `weight_mask`);
  * eoi.torch.apply(model, artifact, masks="hook"): masked gradients, plus
    eoi.torch.register_step_hook(optimizer, model), which zeroes the masked weights after
    every step;

then checks that both compute the same function and that SGD (momentum, weight decay)
keeps every weight outside its mask exactly zero while the others train.

    pip install . torch                                # from a clone: eoi, and PyTorch
    python examples/load_torch.py                      # specs/mlp-mnist.toml
    python examples/load_torch.py --spec specs/mlp-1000-tanh.toml --eoi target/release/eoi

--eoi runs another eoi binary than the one installed with the package (it sets
EOI_BINARY). PyTorch is too large for the project's CI: this example is run by hand
(python/tests_torch runs it). Prints one `ok` line per check; exits 1 if one fails.
"""

import argparse
import os
import sys

import torch
from torch import nn

import eoi
import eoi.torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


class MLP(nn.Module):
    """nn.Linear modules at the spec's module paths (net.0, hidden.7, ...), applied in the
    spec's order with tanh between them."""

    def __init__(self, layers, biases):
        super().__init__()
        self.paths = [path for path, _ in layers]
        for path, (out, inp) in layers:
            parent = self
            *parents, leaf = path.split(".")
            for part in parents:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, nn.Linear(inp, out, bias=path in biases))

    def forward(self, x):
        for k, path in enumerate(self.paths):
            x = self.get_submodule(path)(x)
            if k + 1 < len(self.paths):
                x = torch.tanh(x)
        return x


def check(condition, message):
    print(f"{'ok  ' if condition else 'FAIL'}  {message}")
    if not condition:
        sys.exit(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=os.path.join(ROOT, "specs", "mlp-mnist.toml"))
    p.add_argument("--eoi", help="the eoi binary to run (default: the one installed with the package)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps to take")
    args = p.parse_args(argv)
    if args.eoi:
        os.environ["EOI_BINARY"] = args.eoi

    planned = eoi.plan(args.spec)["layers"]
    for layer in planned:
        if len(layer["shape"]) != 2 or not layer["name"].endswith(".weight"):
            sys.exit(f"{args.spec}: layer {layer['name']} {layer['shape']}: this example builds MLPs of <module>.weight layers")
    layers = [(layer["name"].removesuffix(".weight"), layer["shape"]) for layer in planned]
    artifact = eoi.generate(args.spec)
    biases = {path for path, _ in layers if f"{path}.bias" in artifact}

    torch.manual_seed(0)
    pruned, hooked = MLP(layers, biases), MLP(layers, biases)
    report = eoi.torch.apply(pruned, artifact)  # strict=True, masks="prune"
    check(not report.missing and len(report.masked) == len(layers), f"prune: {report}")
    check(all(hasattr(pruned.get_submodule(path), "weight_orig") for path, _ in layers), "prune: every layer has weight_orig and weight_mask")
    report = eoi.torch.apply(hooked, artifact, masks="hook")
    check(not report.missing and len(report.masked) == len(layers), f"hook: {report}")

    x = torch.randn(32, layers[0][1][1])
    y = torch.randint(0, layers[-1][1][0], (32,))
    with torch.no_grad():
        check(torch.equal(pruned(x), hooked(x)), "both models compute the same function")

    def outside(model):
        """The largest |weight| outside the masks, of the weight the forward pass uses."""
        worst = 0.0
        for path, _ in layers:
            weight = model.get_submodule(path).weight.detach()
            away = weight[artifact[f"{path}.weight_mask"] == 0]
            worst = max(worst, float(away.abs().max()) if away.numel() else 0.0)
        return worst

    check(outside(pruned) == outside(hooked) == 0.0, "weights outside the masks start at zero")
    for name, model in (("prune", pruned), ("hook", hooked)):
        before = [model.get_submodule(path).weight.detach().clone() for path, _ in layers]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        if name == "hook":
            eoi.torch.register_step_hook(optimizer, model)
        for k in range(args.steps):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            print(f"      {name} step {k + 1}: loss {loss.item():.4f}")
        check(outside(model) == 0.0, f"{name}: weights outside the masks are still exactly zero after {args.steps} SGD steps")
        moved = sum(int((model.get_submodule(path).weight.detach() != b).sum()) for (path, _), b in zip(layers, before))
        kept = sum(int(artifact[f"{path}.weight_mask"].sum()) for path, _ in layers)
        check(moved > kept // 2, f"{name}: the kept weights train ({moved} of {kept} changed)")
    print(f"loaded {args.spec} into a {len(layers)}-layer PyTorch MLP, both ways, and trained it with fixed masks")


if __name__ == "__main__":
    main()
