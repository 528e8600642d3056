"""eoi: sparse, exactly orthogonal initializations (EOI, Nowak et al., ICML 2024) from
Python.

The wheel installs the `eoi` command-line tool (also `python -m eoi`) and this package, a
thin layer over it for training scripts:

- `generate(spec)` runs `eoi generate` and returns the weights and masks as NumPy arrays;
  `plan(spec)` returns `eoi plan --json`; `run(*args)` runs any command; the binary's
  refusals raise `EoiError` with its message and exit code.
- `load(artifact)` reads eoi's safetensors output (a file, a `--masks` pair, a sharded or
  `--base` directory) into the same `Tensors`.
- `eoi.torch.apply(model, artifact)` loads an artifact into an `nn.Module` and keeps the
  masked weights at zero during training; `eoi.flax.apply(params, artifact)` does the same
  for Flax (linen or nnx) parameter trees, with `eoi.optax.masked(tx, masks)`.

`eoi.torch`, `eoi.flax` and `eoi.optax` import PyTorch, JAX/Flax and optax; `import eoi`
alone needs only NumPy and safetensors. The guide is docs/python.md in the repository.

>>> import eoi
>>> eoi.__version__ == eoi.run("--version").stdout.decode().split()[1]
True
"""

from __future__ import annotations

from importlib import metadata as _metadata

from eoi._artifact import Artifact, Parameter, Tensors, load, parameters, to_flax, to_torch
from eoi._binary import binary, find_binary
from eoi._run import EoiError, Spec, generate, plan, run

try:
    #: The installed distribution's version, which maturin took from Cargo.toml: the
    #: version `eoi --version` prints.
    __version__: str = _metadata.version("eoi")
except _metadata.PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "Artifact",
    "EoiError",
    "Parameter",
    "Spec",
    "Tensors",
    "__version__",
    "binary",
    "find_binary",
    "generate",
    "load",
    "parameters",
    "plan",
    "run",
    "to_flax",
    "to_torch",
]
