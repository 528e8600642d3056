#!/usr/bin/env python3
"""Twelve real model families end to end, from the model to masked training steps.

Each family goes from the model to an EOI-initialized model that loads strictly and trains
with its masks held fixed, checked at every step.

For each family the script does what a user does, with the real `eoi` binary:

  build     build the model (no download: torchvision with weights=None, transformers from
            a config object, small where the default is large, with the real architecture
            and parameter names) and save it as the base checkpoint, as its users save it:
            torchvision with examples/shapes_from_torch.py's save(), transformers with
            save_pretrained(DIR) (Llama in bf16 and in 5 shards), the Flax CNN's params
            with safetensors.flax.save_file;
  spec      `eoi spec --density 0.1 --distribution erk`, half the families from the shape
            list shapes_from_torch.py / shapes_from_flax.py prints, half from the saved
            checkpoint's header; the spec's layers must be the model's linear and
            convolution weights, with the model's groups (a header does not record groups:
            mobilenet_v2's and efficientnet_b0's [C, 1, k, k] weights are assumed
            depthwise, which this checks against the modules);
  generate  `eoi generate SPEC --base BASE -o OUT` (transformers: OUT is a directory, the
            masks go to their own file with --masks);
  load      torchvision: masks popped from the state dict, load_state_dict(strict=True);
            transformers: from_pretrained(OUT) must report no missing, unexpected or
            mismatched key, and the masks find their parameters by name (or, where
            transformers renames a module in memory, by value); Flax: the file unflattened
            must have the tree, shapes and dtypes of model.init's params;
  copied    every tensor of OUT that the spec does not name has the base's bytes, dtype and
            shape, and OUT holds nothing else but the layers (and their masks);
  masks     every layer's loaded weight is exactly zero outside its mask;
  train     two SGD steps (momentum 0.9, weight decay) and two AdamW steps on a small
            random batch, gradients masked by hooks (Flax: updates multiplied by the masks);
            after each step no weight outside a mask may be nonzero (checked before the
            masks are multiplied in again), and in every layer some kept weights moved;
  verify    `eoi verify OUT` and `eoi verify OUT --regenerate --base BASE` exit 0.

It prints one line per step per family, then a table. Exits 1 if any family fails: the
failing step's line says why, and the family's other steps are skipped.

    python examples/real_models.py --eoi target/release/eoi
    python examples/real_models.py --families resnet50,gpt2 --work runs --json real.json
    python examples/real_models.py --families flax-cnn            # JAX only, no torch

Needs the eoi binary (--eoi, default $EOI or `eoi` on the PATH), numpy and safetensors;
torch, torchvision and transformers for their families (imported only when one runs);
jax, flax and optax for flax-cnn. Everything runs on the CPU; the twelve take a few
minutes and about 3 GB of disk in --work (by default a temporary directory, removed).
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import traceback

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# name: (framework, where the spec comes from). Half from a shape list, half from a header.
FAMILIES = {
    "resnet50": ("torchvision", "shapes"),
    "mobilenet_v2": ("torchvision", "header"),
    "convnext_tiny": ("torchvision", "shapes"),
    "efficientnet_b0": ("torchvision", "header"),
    "resnext50_32x4d": ("torchvision", "shapes"),
    "vit_b_16": ("torchvision", "header"),
    "bert": ("transformers", "header"),
    "llama": ("transformers", "header"),
    "t5": ("transformers", "shapes"),
    "vit": ("transformers", "header"),
    "gpt2": ("transformers", "shapes"),
    "flax-cnn": ("flax", "shapes"),
}
SPEC_FLAGS = ["--density", "0.1", "--distribution", "erk"]


class Failure(Exception):
    """A check that did not hold, or a command that failed: the family fails with this reason."""


def check(condition, reason):
    if not condition:
        raise Failure(reason)


# ---------------------------------------------------------------------------------------
# eoi, specs and checkpoints, independent of any framework


class Eoi:
    """The eoi binary under test."""

    def __init__(self, path):
        self.path = path

    def run(self, *args, stdin=None):
        """Runs `eoi ARGS`; returns its standard output, or fails with its standard error."""
        command = [self.path, *map(str, args)]
        try:
            done = subprocess.run(command, input=stdin, capture_output=True, text=True)
        except FileNotFoundError:
            sys.exit(f"cannot run eoi as '{self.path}': build it (cargo build --release) and pass --eoi target/release/eoi")
        if done.returncode != 0:
            shown = " ".join(command[1:4]) + (" ..." if len(command) > 4 else "")
            raise Failure(f"`eoi {shown}` exited with {done.returncode}: {done.stderr.strip()}")
        self.stderr = done.stderr
        return done.stdout


def layers_of(spec_path):
    """The spec's layers as {name: {"shape", "groups", "tied"}}, `repeat` expanded."""
    with open(spec_path, "rb") as f:
        spec = tomllib.load(f)
    layers = {}
    for table in spec.get("layer", []):
        repeat = table.get("repeat")
        names = [table["name"].replace("{i}", str(i)) for i in range(repeat)] if repeat else [table["name"]]
        for name in names:
            layers[name] = {"shape": table["shape"], "groups": table.get("groups", 1), "tied": table.get("tied", [])}
    return layers, len(spec.get("layer", []))


class Checkpoint:
    """The tensors of a safetensors file, a save_pretrained directory or a sharded
    checkpoint (directory or index), read as stored: dtype, shape and raw bytes."""

    def __init__(self, path):
        if os.path.isdir(path):
            index = os.path.join(path, "model.safetensors.index.json")
            path = index if os.path.exists(index) else os.path.join(path, "model.safetensors")
        if path.endswith(".index.json"):
            with open(path) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            files = [os.path.join(os.path.dirname(path), name) for name in files]
        else:
            files = [path]
        self.tensors = {}
        for file in files:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, info in header.items():
                if name != "__metadata__":
                    start, end = info["data_offsets"]
                    self.tensors[name] = (file, info["dtype"], info["shape"], 8 + n + start, end - start)

    def names(self):
        return set(self.tensors)

    def meta(self, name):
        _, dtype, shape, _, _ = self.tensors[name]
        return dtype, shape

    def data(self, name):
        file, _, _, start, size = self.tensors[name]
        with open(file, "rb") as f:
            f.seek(start)
            return f.read(size)


def check_copied(base_path, out_path, layers, masks_inline):
    """Every base tensor the spec does not name is in OUT with the same dtype, shape and
    bytes; OUT holds nothing else but the layers (and their masks, if inline)."""
    base, out = Checkpoint(base_path), Checkpoint(out_path)
    named = set(layers) | {t for layer in layers.values() for t in layer["tied"]}
    copied = sorted(base.names() - named)
    for name in copied:
        check(name in out.tensors, f"{name}: a tensor of the base is missing from OUT")
        check(out.meta(name) == base.meta(name), f"{name}: {out.meta(name)} in OUT, {base.meta(name)} in the base")
        check(out.data(name) == base.data(name), f"{name}: its bytes differ from the base's")
    masks = {f"{name}_mask" for name in layers} if masks_inline else set()
    expected = set(copied) | set(layers) | masks | (named & base.names())
    check(out.names() == expected, f"OUT's tensors are not the base's plus the layers' masks: extra {sorted(out.names() - expected)[:3]}, missing {sorted(expected - out.names())[:3]}")
    size = sum(base.tensors[n][4] for n in copied)
    size = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
    return len(copied), f"{len(copied)} tensors ({size}) not in the spec have the base's bytes"


# ---------------------------------------------------------------------------------------
# PyTorch families (torch is imported only when one runs)


def torch_modules():
    import torch

    import shapes_from_torch

    return torch, shapes_from_torch


def torch_layer_figures(model, layers):
    """Checks that the spec's layers are the model's linear and convolution weights, with
    the model's groups; returns a description."""
    entries = torch_modules()[1].shapes(model)
    weights = {e["name"]: e for e in entries if e["kind"] in ("linear", "conv") and "tied_to" not in e}
    check(len(weights) == len(layers), f"the spec has {len(layers)} layers, the model {len(weights)} linear and convolution weights")
    # transformers 5 renames some modules in memory (ViT) and saves the original names: a
    # spec from the saved header names those, so they are matched by shape only.
    renamed = sorted(set(layers) - set(weights))
    unnamed = sorted(set(weights) - set(layers))
    shapes = lambda names, of: sorted(list(of[n]["shape"]) for n in names)  # noqa: E731
    check(shapes(renamed, layers) == shapes(unnamed, weights), f"the spec's layers {renamed[:3]} are not the model's weights {unnamed[:3]}")
    grouped = depthwise = 0
    for name, layer in layers.items():
        if name not in weights:
            continue
        check(list(layer["shape"]) == weights[name]["shape"], f"{name}: the spec's shape {layer['shape']} is not the model's {weights[name]['shape']}")
        if weights[name]["kind"] == "conv":
            groups = weights[name].get("groups", 1)
            check(layer["groups"] == groups, f"{name}: the spec says groups = {layer['groups']}, the model {groups}")
            grouped += groups > 1
            depthwise += groups > 1 and layer["shape"][1] == 1
    groups = f"groups as in the model ({grouped} grouped, {depthwise} of them depthwise)" if grouped else "no grouped convolution"
    note = f"; {len(renamed)} saved under other names than in memory" if renamed else ""
    return f"{len(layers)} layers = the model's linear/conv weights, {groups}{note}"


def torch_train(torch, model, loss_of, pairs):
    """Two SGD (momentum) and two AdamW steps with the gradients masked by hooks; after each
    step, before the masks are multiplied in again, nothing outside a mask may be nonzero."""
    hooks = [p.register_hook(lambda g, m=m: g * m) for _, p, m in pairs]
    start = [p.detach().clone() for _, p, _ in pairs]
    model.train()
    optimizers = [
        ("SGD", torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)),
        ("AdamW", torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)),
    ]
    losses = []
    torch.manual_seed(1)
    for label, optimizer in optimizers:
        for _ in range(2):
            optimizer.zero_grad()
            loss = loss_of(model)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            check(np.isfinite(losses[-1]), f"the loss is {losses[-1]} after {label} steps")
            for name, p, m in pairs:
                outside = int(((p.detach() != 0) & (m == 0)).sum())
                check(outside == 0, f"{name}: {outside} weights outside the mask are nonzero after a masked {label} step")
            with torch.no_grad():
                for _, p, m in pairs:
                    p.mul_(m)
    for hook in hooks:
        hook.remove()
    moved = kept = 0
    for (name, p, m), p0 in zip(pairs, start):
        changed = int(((p.detach() != p0) & (m != 0)).sum())
        check(changed > 0, f"{name}: no weight inside the mask moved in 4 steps")
        moved, kept = moved + changed, kept + int((m != 0).sum())
    loss_text = " ".join(f"{v:.3g}" for v in losses)
    return f"2 SGD + 2 AdamW steps (losses {loss_text}): zeros stay zero, {moved:,} of {kept:,} kept weights moved, in every layer"


def torch_masks_zero(pairs):
    for name, p, m in pairs:
        check(tuple(p.shape) == tuple(m.shape), f"{name}: the weight is {tuple(p.shape)}, its mask {tuple(m.shape)}")
        outside = int(((p.detach() != 0) & (m == 0)).sum())
        check(outside == 0, f"{name}: {outside} weights outside the mask are nonzero after loading")
    nnz = sum(int((m != 0).sum()) for _, _, m in pairs)
    numel = sum(m.numel() for _, _, m in pairs)
    return nnz / numel, f"{len(pairs)} layers: every weight is zero outside its mask; density {nnz / numel:.4f} ({nnz:,} of {numel:,})"


class Torchvision:
    """A torchvision classifier, saved with shapes_from_torch.save(); masks inline in OUT."""

    def __init__(self, name, work):
        self.name, self.work = name, work
        self.base = os.path.join(work, "base.safetensors")
        self.out = os.path.join(work, "eoi.safetensors")
        self.masks = None

    def factory(self):
        import torchvision

        return getattr(torchvision.models, self.name)

    def build(self):
        torch, shapes_from_torch = torch_modules()
        torch.manual_seed(0)
        self.model = self.factory()(weights=None)
        shapes_from_torch.save(self.model, self.base)
        params = sum(p.numel() for p in self.model.parameters())
        return f"{params / 1e6:.1f}M parameters, base {os.path.basename(self.base)} ({len(Checkpoint(self.base).names())} tensors)"

    def shape_list(self):
        return torch_modules()[1].shapes(self.model)

    def load(self, layers):
        torch, _ = torch_modules()
        from safetensors.torch import load_file

        state = load_file(self.out)
        masks = {name[: -len("_mask")]: state.pop(name) for name in list(state) if name.endswith("_mask")}
        check(set(masks) == set(layers), "OUT's masks are not the spec's layers")
        model = self.factory()(weights=None)
        model.load_state_dict(state, strict=True)
        params = dict(model.named_parameters())
        self.pairs = [(name, params[name], masks[name].to(params[name].dtype)) for name in layers]
        for name, p, _ in self.pairs:
            check(torch.equal(p.detach(), state[name]), f"{name}: the loaded weight is not the file's")
        self.model = model
        return f"load_state_dict(strict=True) took all {len(state)} tensors ({len(masks)} masks set aside)"

    def loss_of(self, model):
        torch, _ = torch_modules()
        x = torch.randn(2, 3, 224, 224)
        y = torch.randint(0, 1000, (2,))
        return torch.nn.functional.cross_entropy(model(x), y)


# Configs as tests/fixtures/models/make.py builds them: small where the default is large.
def hf_configs(t):
    return {
        "bert": (t.AutoModel, t.BertConfig(num_hidden_layers=2), "hidden"),
        "llama": (
            t.AutoModelForCausalLM,
            t.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
            "lm",
        ),
        "t5": (t.AutoModelForSeq2SeqLM, t.T5Config(num_layers=2, num_decoder_layers=2), "seq2seq"),
        "vit": (t.AutoModel, t.ViTConfig(num_hidden_layers=2), "image"),
        "gpt2": (t.AutoModelForCausalLM, t.GPT2Config(n_layer=2), "lm"),
    }


class Transformers:
    """A Hugging Face model saved with save_pretrained; OUT a directory, masks apart."""

    def __init__(self, name, work):
        import transformers

        transformers.utils.logging.disable_progress_bar()
        # Loading problems are checked (output_loading_info), not printed.
        transformers.utils.logging.set_verbosity_error()
        self.name, self.work = name, work
        self.auto, self.config, self.task = hf_configs(transformers)[name]
        self.base = os.path.join(work, "base")
        self.out = os.path.join(work, "eoi")
        self.masks = os.path.join(work, "eoi-masks.safetensors")

    def build(self):
        torch, _ = torch_modules()
        torch.manual_seed(0)
        self.model = self.auto.from_config(self.config)
        extra = {}
        if self.name == "llama":
            # Llama as it is usually shipped: bf16, in shards.
            self.model = self.model.to(torch.bfloat16)
            extra["max_shard_size"] = "1MB"
        self.model.save_pretrained(self.base, **extra)
        files = sorted(f for f in os.listdir(self.base) if f.endswith(".safetensors"))
        params = sum(p.numel() for p in self.model.parameters())
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        return f"{type(self.model).__name__}, {params / 1e6:.1f}M parameters in {dtype}, save_pretrained: {len(files)} safetensors file(s), {len(Checkpoint(self.base).names())} tensors"

    def shape_list(self):
        return torch_modules()[1].shapes(self.model)

    def load(self, layers):
        torch, _ = torch_modules()
        from safetensors.torch import load_file

        model, info = self.auto.from_pretrained(self.out, output_loading_info=True)
        problems = {k: sorted(v)[:3] for k, v in info.items() if v}
        check(not problems, f"from_pretrained reported {problems}")
        masks = load_file(self.masks)
        check(set(masks) == set(layers), "the masks file's tensors are not the spec's layers")
        params = dict(model.named_parameters())
        out = Checkpoint(self.out)
        by_value = 0
        self.pairs = []
        for name, mask in masks.items():
            saved = load_tensor(out, name)
            p = params.get(name)
            if p is None or p.shape != mask.shape:
                # Renamed in memory (transformers 5's ViT): the one parameter holding exactly
                # the saved weight, found right after loading.
                found = [q for q in params.values() if q.shape == saved.shape and torch.equal(q.detach(), saved)]
                check(len(found) == 1, f"{name}: {len(found)} parameters hold the saved weight")
                p, by_value = found[0], by_value + 1
            check(torch.equal(p.detach(), saved), f"{name}: the loaded weight is not the file's")
            self.pairs.append((name, p, mask.to(p.dtype)))
        self.model = model
        renamed = f", {by_value} of them by value (renamed in memory)" if by_value else ""
        return f"from_pretrained(OUT): no missing, unexpected or mismatched key; {len(masks)} masks found their parameters{renamed}"

    def loss_of(self, model):
        torch, _ = torch_modules()
        vocab = self.config.vocab_size if self.task != "image" else None
        if self.task == "image":
            out = model(pixel_values=torch.randn(2, 3, self.config.image_size, self.config.image_size))
        elif self.task == "hidden":
            out = model(input_ids=torch.randint(0, vocab, (2, 16)))
        elif self.task == "lm":
            ids = torch.randint(0, vocab, (2, 16))
            return model(input_ids=ids, labels=ids).loss.float()
        else:
            # decoder_input_ids given: a T5Config built from defaults has no decoder_start_token_id.
            ids, labels = torch.randint(0, vocab, (2, 16)), torch.randint(0, vocab, (2, 8))
            return model(input_ids=ids, decoder_input_ids=torch.randint(0, vocab, (2, 8)), labels=labels).loss
        # A base model: the hidden states and the pooler's output, so every layer has a gradient.
        return out.last_hidden_state.square().mean() + out.pooler_output.square().mean()


def load_tensor(checkpoint, name):
    """One tensor of a Checkpoint as a torch tensor (any dtype, bf16 too)."""
    from safetensors import safe_open

    file = checkpoint.tensors[name][0]
    with safe_open(file, framework="pt") as f:
        return f.get_tensor(name)


# ---------------------------------------------------------------------------------------
# The Flax CNN (jax is imported only when it runs)


class FlaxCNN:
    """examples/shapes_from_flax.py's CNN; params saved flattened with "." as names."""

    def __init__(self, name, work):
        self.name, self.work = name, work
        self.base = os.path.join(work, "base.safetensors")
        self.out = os.path.join(work, "eoi.safetensors")
        self.masks = None

    def build(self):
        import jax
        import jax.numpy as jnp
        from flax.traverse_util import flatten_dict
        from safetensors.flax import save_file

        import shapes_from_flax

        self.model, self.x = shapes_from_flax.CNN(), jnp.zeros((1, 28, 28, 1))
        self.params = self.model.init(jax.random.PRNGKey(0), self.x)["params"]
        save_file(flatten_dict(self.params, sep="."), self.base, metadata={"format": "flax"})
        params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(self.params))
        return f"{params / 1e6:.1f}M parameters, base {os.path.basename(self.base)} ({len(Checkpoint(self.base).names())} tensors)"

    def shape_list(self):
        import shapes_from_flax

        return shapes_from_flax.shapes(self.model, self.x)

    def load(self, layers):
        import jax
        from flax.traverse_util import flatten_dict, unflatten_dict
        from safetensors.flax import load_file

        tensors = load_file(self.out)
        masks = {name[: -len("_mask")]: tensors.pop(name) for name in list(tensors) if name.endswith("_mask")}
        check(set(masks) == set(layers), "OUT's masks are not the spec's layers")
        loaded = unflatten_dict(tensors, sep=".")
        check(jax.tree.structure(loaded) == jax.tree.structure(self.params), "OUT's tensors are not the tree of the model's params")
        old = flatten_dict(self.params, sep=".")
        for name, new in tensors.items():
            check(new.shape == old[name].shape and new.dtype == old[name].dtype, f"{name}: {new.dtype}{new.shape} in OUT, {old[name].dtype}{old[name].shape} in the model")
        self.params = loaded
        self.mask_tree = unflatten_dict({k: masks[k].astype(v.dtype) if k in masks else np.ones(v.shape, v.dtype) for k, v in tensors.items()}, sep=".")
        self.pairs = [(name, tensors[name], masks[name]) for name in layers]
        return f"every one of the {len(tensors)} params from OUT, as model.init's tree ({len(masks)} masks set aside)"

    def masks_zero(self):
        for name, w, m in self.pairs:
            outside = int(np.sum((np.asarray(w) != 0) & (np.asarray(m) == 0)))
            check(outside == 0, f"{name}: {outside} weights outside the mask are nonzero after loading")
        nnz = sum(int(np.sum(np.asarray(m) != 0)) for _, _, m in self.pairs)
        numel = sum(int(np.prod(m.shape)) for _, _, m in self.pairs)
        return nnz / numel, f"{len(self.pairs)} kernels: every weight is zero outside its mask; density {nnz / numel:.4f} ({nnz:,} of {numel:,})"

    def train(self):
        import jax
        import jax.numpy as jnp
        import optax
        from flax.traverse_util import flatten_dict

        x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
        y = jax.random.randint(jax.random.key(2), (4,), 0, 10)

        def loss(params):
            return optax.softmax_cross_entropy_with_integer_labels(self.model.apply({"params": params}, x), y).mean()

        def masked(updates, state, params=None):
            return jax.tree.map(jnp.multiply, updates, self.mask_tree), state

        mask_updates = optax.GradientTransformation(lambda params: optax.EmptyState(), masked)
        params, start, losses = self.params, flatten_dict(self.params, sep="."), []
        for label, inner in [("SGD", optax.sgd(0.01, momentum=0.9)), ("AdamW", optax.adamw(1e-3, weight_decay=0.01))]:
            optimizer = optax.chain(inner, mask_updates)
            state = optimizer.init(params)

            @jax.jit
            def step(params, state):
                value, grads = jax.value_and_grad(loss)(params)
                updates, state = optimizer.update(grads, state, params)
                return optax.apply_updates(params, updates), state, value

            for _ in range(2):
                params, state, value = step(params, state)
                losses.append(float(value))
                flat = flatten_dict(params, sep=".")
                for name, _, m in self.pairs:
                    outside = int(jnp.sum((flat[name] != 0) & (m == 0)))
                    check(outside == 0, f"{name}: {outside} weights outside the mask are nonzero after a masked {label} step")
        moved = kept = 0
        flat = flatten_dict(params, sep=".")
        for name, _, m in self.pairs:
            changed = int(jnp.sum((flat[name] != start[name]) & (m != 0)))
            check(changed > 0, f"{name}: no weight inside the mask moved in 4 steps")
            moved, kept = moved + changed, kept + int(jnp.sum(m != 0))
        loss_text = " ".join(f"{v:.3g}" for v in losses)
        return f"2 SGD + 2 AdamW optax steps, updates masked (losses {loss_text}): zeros stay zero, {moved:,} of {kept:,} kept weights moved, in every layer"


# ---------------------------------------------------------------------------------------
# One family, step by step


class Run:
    """One family's run: its steps, their times and figures, and how it ended."""

    def __init__(self, name, eoi, work):
        self.name, self.eoi = name, eoi
        self.framework, self.source = FAMILIES[name]
        self.work = os.path.join(work, name)
        os.makedirs(self.work, exist_ok=True)
        self.spec = os.path.join(self.work, "spec.toml")
        self.seconds, self.figures = {}, {"family": name, "framework": self.framework, "spec_from": self.source}
        self.failed = None
        self.steps = {}

    def step(self, name, action):
        if self.failed:
            return
        start = time.perf_counter()
        try:
            detail = action()
            status = "ok  "
        except Failure as e:
            detail, status = str(e), "FAIL"
            self.failed = {"step": name, "reason": detail}
        except Exception as e:  # a crash in a framework or in this script: report it, go on
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            self.failed = {"step": name, "reason": detail, "traceback": traceback.format_exc()}
        self.seconds[name] = time.perf_counter() - start
        self.steps[name] = detail
        print(f"{self.name:<16} {name:<9} {status}  {detail}  ({self.seconds[name]:.1f} s)", flush=True)

    def run(self):
        model = {"torchvision": Torchvision, "transformers": Transformers, "flax": FlaxCNN}[self.framework]
        self.m = None

        def build():
            self.m = model(self.name, self.work)
            return self.m.build()

        self.step("build", build)
        self.step("spec", self.make_spec)
        self.step("generate", self.generate)
        self.step("load", lambda: self.m.load(self.layers))
        self.step("copied", self.copied)
        self.step("masks", self.masks_zero)
        self.step("train", self.train)
        self.step("verify", self.verify)
        self.figures["passed"] = self.failed is None
        self.figures["failed"] = self.failed
        self.figures["seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        self.figures["steps"] = self.steps
        return self.figures

    def make_spec(self):
        flax = ["--layout", "flax"] if self.framework == "flax" else []
        if self.source == "shapes":
            listing = json.dumps(self.m.shape_list(), indent=1)
            if self.framework == "flax":
                # From standard input, as `shapes_from_flax.py | eoi spec --from -` does.
                self.eoi.run("spec", "--from", "-", *flax, *SPEC_FLAGS, "-o", self.spec, "--force", stdin=listing)
            else:
                path = os.path.join(self.work, "shapes.json")
                with open(path, "w") as f:
                    f.write(listing)
                self.eoi.run("spec", "--from", path, *SPEC_FLAGS, "-o", self.spec, "--force")
            source = "shape list"
        else:
            self.eoi.run("spec", "--from", self.m.base, *SPEC_FLAGS, "-o", self.spec, "--force")
            source = "header"
        warnings = [line for line in self.eoi.stderr.splitlines() if line.startswith("warning:")]
        self.layers, tables = layers_of(self.spec)
        self.figures.update(layers=len(self.layers), tables=tables)
        if self.framework == "flax":
            kernels = {e["name"] for e in self.m.shape_list() if e["kind"] in ("linear", "conv")}
            check(kernels == set(self.layers), f"the spec's layers {sorted(self.layers)} are not the CNN's kernels {sorted(kernels)}")
            detail = f"{len(self.layers)} layers = the CNN's Conv and Dense kernels"
        else:
            detail = torch_layer_figures(self.m.model, self.layers)
        assumed = sum("assumed depthwise" in w for w in warnings)
        depthwise = sum(layer["groups"] > 1 for layer in self.layers.values())
        note = f" ({depthwise} assumed depthwise from the header: right)" if assumed else ""
        return f"from the {source}: {detail}{note}, {tables} tables"

    def generate(self):
        extra = ["--masks", self.m.masks] if self.m.masks else []
        summary = json.loads(self.eoi.run("generate", self.spec, "--base", self.m.base, "-o", self.m.out, *extra, "--force", "--json"))
        self.figures["generate_density"] = summary["density"]
        self.figures["generate_seconds"] = summary["seconds"]
        where = f"{self.m.out} + {os.path.basename(self.m.masks)}" if self.m.masks else self.m.out
        return f"{os.path.relpath(where, self.work)}: {summary['nnz']:,} nonzeros of {summary['params']:,} in {summary['seconds']:.2f} s"

    def copied(self):
        count, detail = check_copied(self.m.base, self.m.out, self.layers, masks_inline=self.m.masks is None)
        self.figures["copied"] = count
        return detail

    def masks_zero(self):
        density, detail = self.m.masks_zero() if self.framework == "flax" else torch_masks_zero(self.m.pairs)
        self.figures["density"] = round(density, 5)
        check(abs(density - self.figures["generate_density"]) < 1e-9, f"the masks' density {density} is not the {self.figures['generate_density']} eoi reported")
        return detail

    def train(self):
        if self.framework == "flax":
            return self.m.train()
        torch, _ = torch_modules()
        torch.manual_seed(1)
        return torch_train(torch, self.m.model, self.m.loss_of, self.m.pairs)

    def verify(self):
        plain = json.loads(self.eoi.run("verify", self.m.out, "--json"))
        check(plain["passed"], "eoi verify failed")
        check(len(plain["layers"]) == len(self.layers), f"eoi verify checked {len(plain['layers'])} layers, the spec has {len(self.layers)}")
        check(len(plain["copied"]) == self.figures["copied"], f"eoi verify lists {len(plain['copied'])} copied tensors, not {self.figures['copied']}")
        again = json.loads(self.eoi.run("verify", self.m.out, "--regenerate", "--base", self.m.base, "--json"))
        check(again["passed"] and again["regenerate"]["passed"], "eoi verify --regenerate --base failed")
        compared = again["regenerate"]["compared"]
        copies = again["regenerate"]["copies"]
        self.figures["verify"] = "pass"
        return f"eoi verify: {len(plain['layers'])} layers pass; --regenerate --base: {compared} tensors regenerated and {copies} copies compared, bit for bit"


# ---------------------------------------------------------------------------------------


def table(results):
    """The summary: one row per family, in Markdown."""
    lines = [
        "| family | spec from | layers (tables) | tensors copied | density | generate | verify | end to end | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        failed = r["failed"]
        verify = "FAIL" if failed and failed["step"] == "verify" else r.get("verify", "not run")
        layers = f"{r['layers']} ({r['tables']})" if "layers" in r else ""
        density = f"{r['density']:.4f}" if "density" in r else ""
        generate = f"{r['generate_seconds']:.2f} s" if "generate_seconds" in r else ""
        result = f"FAIL ({failed['step']})" if failed else "pass"
        total = sum(r["seconds"].values())
        lines.append(f"| {r['family']} | {r['spec_from']} | {layers} | {r.get('copied', '')} | {density} | {generate} | {verify} | {result} | {total:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eoi", default=os.environ.get("EOI", "eoi"), help="the eoi binary (default $EOI or eoi on the PATH)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated families to run (default: all twelve: {', '.join(FAMILIES)})")
    p.add_argument("--work", metavar="DIR", help="keep every file in DIR/<family>/ (files of the same names are replaced); default: a temporary directory, removed")
    p.add_argument("--json", metavar="FILE", help="also write the figures of every family to FILE as JSON")
    args = p.parse_args(argv)

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        p.error(f"unknown family {', '.join(unknown) or '(none given)'}; the families are {', '.join(FAMILIES)}")
    eoi = Eoi(args.eoi)
    try:
        version = eoi.run("--version").strip()
    except Failure as e:
        sys.exit(f"cannot run eoi as '{args.eoi}': {e}")
    print(f"{version}; families: {', '.join(families)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="eoi-real-models-") as tmp:
        work = args.work or tmp
        results = [Run(name, eoi, work).run() for name in families]

    print()
    print(table(results))
    failed = [r for r in results if not r["passed"]]
    print(f"\n{len(results) - len(failed)} of {len(results)} families passed end to end" + (f"; failed: {', '.join(r['family'] + ' (' + r['failed']['step'] + ')' for r in failed)}" if failed else ""))
    for r in failed:
        if "traceback" in r["failed"]:
            print(f"\n{r['family']}: {r['failed']['traceback']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"eoi": version, "spec_flags": SPEC_FLAGS, "families": results}, f, indent=1)
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
