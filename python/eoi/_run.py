"""Running the `eoi` binary: `run` for any command, `generate` and `plan` for the two a
training script needs, and `EoiError` for the binary's refusals.

A spec is a path to a TOML file, a TOML string (text with a newline) or a dict (written as
TOML); the last two reach the binary on standard input, so its messages name `<stdin>`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

from eoi import _toml
from eoi._artifact import Tensors, from_bytes
from eoi._binary import binary

__all__ = ["EoiError", "Spec", "generate", "plan", "run"]

#: A spec: a path to a TOML file (str or os.PathLike), the TOML text itself (a str with a
#: newline in it), or a dict as `tomllib.load` returns one.
Spec = Union[str, "os.PathLike[str]", Mapping[str, Any]]

Dtype = Literal["f32", "f64", "f16", "bf16"]
MaskDtype = Literal["bool", "u8", "f32"]
Layout = Literal["torch", "flax"]
Names = Literal["plain", "torch-prune"]
BelowMinimum = Literal["error", "clamp"]


class EoiError(Exception):
    """The `eoi` binary refused or failed: `message` is what it printed on standard error
    (the error, its location and a hint), `exit_code` its exit code (2: the spec or the
    options cannot be used; 1: a failure while writing; 130/143: interrupted; see
    docs/guide.md, "The command line"), `command` what was run.

    >>> try:
    ...     plan("seed = 1\\n[sparsity]\\ndensity = 2.0\\n")
    ... except EoiError as e:
    ...     print(e.exit_code, "density" in e.message)
    2 True
    """

    def __init__(self, message: str, exit_code: int, command: Sequence[str]) -> None:
        super().__init__(message, exit_code)
        self.message = message
        self.exit_code = exit_code
        self.command = list(command)

    def __str__(self) -> str:
        return f"eoi exited with {self.exit_code}: {self.message}"


def run(*args: str | os.PathLike[str], input: str | bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Runs `eoi ARGS...` (the installed binary, or `$EOI_BINARY`) and returns it finished,
    its standard output and error as bytes; `input` is given on standard input. Raises
    `EoiError` if it exits non-zero.

    >>> run("--version").stdout.decode().startswith("eoi ")
    True
    """
    command = [os.fspath(binary()), *(os.fspath(arg) for arg in args)]
    data = input.encode() if isinstance(input, str) else input
    done = subprocess.run(command, input=data, stdin=None if data is not None else subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise EoiError(message or f"no message (exit code {done.returncode})", done.returncode, command)
    return done


def generate(
    spec: Spec,
    *,
    seed: int | None = None,
    scheme: str | None = None,
    dtype: Dtype | None = None,
    mask_dtype: MaskDtype | None = None,
    layout: Layout | None = None,
    names: Names | None = None,
    below_minimum: BelowMinimum | None = None,
    threads: int | None = None,
    max_memory: str | None = None,
) -> Tensors:
    """Generates the spec's weights and masks and returns them as NumPy arrays.

    Runs `eoi generate SPEC -o - -q` with an option for each argument given (`--seed`,
    `--scheme`, `--dtype`, `--mask-dtype`, `--layout`, `--names`, `--below-minimum`,
    `--threads`, `--max-memory`; None leaves the spec's choice) and reads the safetensors
    stream from the pipe with the official `safetensors` package: the same bytes `-o FILE`
    would write, so the same arrays. The result is a `dict[str, numpy.ndarray]` in file
    order (`Tensors`) whose `metadata` is the file's (`eoi.layers`, `eoi.seed`, ...).
    Masks are bool unless `mask_dtype` says otherwise. bf16 weights are
    `ml_dtypes.bfloat16` arrays, and need the `ml_dtypes` package (jax installs it);
    without it, ModuleNotFoundError says so.

    Raises `EoiError` (with eoi's message and exit code) when eoi refuses the spec or the
    options.

    >>> import numpy as np
    >>> t = generate({"seed": 1, "sparsity": {"density": 0.25},
    ...               "layer": [{"name": "fc.weight", "shape": [16, 16]}]})
    >>> w, m = t["fc.weight"], t["fc.weight_mask"]
    >>> bool((w[~m] == 0).all()), bool(np.allclose(w @ w.T, np.eye(16), atol=1e-5))
    (True, True)
    """
    options: list[str] = []
    for flag, value in (
        ("--seed", seed),
        ("--scheme", scheme),
        ("--dtype", dtype),
        ("--mask-dtype", mask_dtype),
        ("--layout", layout),
        ("--names", names),
        ("--below-minimum", below_minimum),
        ("--threads", threads),
        ("--max-memory", max_memory),
    ):
        if value is not None:
            options += [flag, str(value)]
    path, text = _spec(spec)
    done = run("generate", path, "-o", "-", "-q", *options, input=text)
    return from_bytes(done.stdout, "eoi generate's output")


def plan(
    spec: Spec,
    *,
    seed: int | None = None,
    scheme: str | None = None,
    format: Literal["safetensors", "npy", "npz"] | None = None,
    below_minimum: BelowMinimum | None = None,
) -> dict[str, Any]:
    """The plan of a spec, as `eoi plan SPEC --json` prints it: per-layer densities,
    expected nonzeros and the tensors an output would hold (docs/spec.md, "plan --json and
    generate --json"). Nothing is generated.

    >>> p = plan("seed = 1\\n[sparsity]\\ndensity = 0.25\\n[[layer]]\\nname = 'fc.weight'\\nshape = [16, 16]\\n")
    >>> p["layers"][0]["name"], p["layers"][0]["density"]
    ('fc.weight', 0.25)
    """
    options: list[str] = []
    for flag, value in (("--seed", seed), ("--scheme", scheme), ("--format", format), ("--below-minimum", below_minimum)):
        if value is not None:
            options += [flag, str(value)]
    path, text = _spec(spec)
    done = run("plan", path, "--json", *options, input=text)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _spec(spec: Spec) -> tuple[str, str | None]:
    """The spec argument for the binary, and the text to give it on standard input."""
    if isinstance(spec, Mapping):
        return "-", _toml.dumps(spec)
    if isinstance(spec, str) and "\n" in spec:
        return "-", spec
    if isinstance(spec, (str, os.PathLike)):
        # A missing file is eoi's to report (EoiError, exit code 2, naming it).
        return os.fspath(spec), None
    raise TypeError(f"a spec is a path, a TOML string or a dict, not {type(spec).__name__}")
