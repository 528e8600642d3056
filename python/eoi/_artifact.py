"""Reading eoi's safetensors output into NumPy, and telling its parameters from its masks.

An artifact is what `eoi generate` wrote: one safetensors file, a `--masks` pair (either
file of it), a sharded directory or its `model.safetensors.index.json`, a `--base`
directory (`model.safetensors` or the index inside), or the `Tensors` that
`eoi.generate` returned. Every form is read into one `Tensors`: every tensor by name, the
masks of a `--masks` pair under their weights' names plus the mask suffix, as in a plain
output, and the safetensors metadata of the output (docs/spec.md, "Metadata").
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import safetensors

__all__ = ["Artifact", "Parameter", "Tensors", "load", "parameters", "to_flax", "to_torch"]

INDEX = "model.safetensors.index.json"

#: What the functions that take an artifact accept: a path to eoi's safetensors output
#: (file, directory or index; str or os.PathLike), or a mapping of tensor names to arrays
#: (`eoi.generate`'s `Tensors`, or a plain dict, read with the default names and layout).
Artifact = Union[str, "os.PathLike[str]", Mapping[str, Any]]

_DTYPES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class Tensors(dict[str, np.ndarray]):
    """Tensors by name in file order, with the safetensors metadata eoi recorded.

    A `dict[str, numpy.ndarray]` (what `eoi.generate` returns and `eoi.load` reads) that
    also carries `metadata`, the file's `__metadata__` (`{}` for arrays from elsewhere);
    `layers` is its `eoi.layers`, one record per layer.

    >>> t = Tensors({"fc.weight": np.eye(2, dtype=np.float32)}, {"eoi.seed": "1"})
    >>> t["fc.weight"].shape, t.metadata["eoi.seed"], t.layers
    ((2, 2), '1', [])
    """

    metadata: dict[str, str]

    def __init__(self, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]] = (), metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(tensors)
        self.metadata = dict(metadata or {})

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The records of `eoi.layers` (name, shape, scheme, density, ...), or [] without."""
        records = self.metadata.get("eoi.layers")
        return json.loads(records) if records else []

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}: {a.dtype}{list(a.shape)}" for name, a in list(self.items())[:4])
        more = f", ... ({len(self)} tensors)" if len(self) > 4 else ""
        return f"Tensors({{{shown}{more}}})"


@dataclass(frozen=True)
class Parameter:
    """One parameter of an artifact: a layer's weight with its mask, or another tensor
    (a bias, a tensor copied from a `--base` checkpoint)."""

    #: The parameter's name in the model: `fc.weight` (for torch-prune names too, whose
    #: file calls it `fc.weight_orig`).
    name: str
    #: Its values as stored (a layer's weight in the artifact's layout).
    value: np.ndarray
    #: A layer's mask (bool, the weight's shape), or None for a tensor eoi does not mask.
    mask: np.ndarray | None


def load(artifact: Artifact) -> Tensors:
    """Reads an artifact (see `Artifact`) into `Tensors`.

    A `--masks` pair is read whole from either of its files: each mask is added under its
    weight's name plus the mask suffix (`fc.weight_mask`), as in a plain output. Shards are
    read whole (their `eoi.layers` put together). Everything is read into memory.

    >>> import eoi, tempfile, os
    >>> spec = 'seed = 1\\n[sparsity]\\ndensity = 0.5\\n[[layer]]\\nname = "fc.weight"\\nshape = [8, 8]\\n'
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = os.path.join(tmp, "init.safetensors")
    ...     done = eoi.run("generate", "-", "-o", out, "--masks", os.path.join(tmp, "masks.safetensors"), input=spec)
    ...     t = eoi.load(out)
    >>> sorted(t), t["fc.weight_mask"].dtype
    (['fc.weight', 'fc.weight_mask'], dtype('bool'))
    """
    if isinstance(artifact, Tensors):
        return artifact
    if isinstance(artifact, Mapping):
        return Tensors({str(name): np.asarray(value) for name, value in artifact.items()})
    path = Path(artifact)
    if path.is_dir():
        if (path / INDEX).is_file():
            return _with_masks(_sharded(path / INDEX), path)
        if (path / "model.safetensors").is_file():
            return _with_masks(_file(path / "model.safetensors"), path)
        if (path / "manifest.json").is_file():
            raise ValueError(f"{path}: an npy directory (--format npy); the eoi package reads safetensors output: generate it with --format safetensors, or read the .npy files with numpy.load")
        raise FileNotFoundError(f"{path}: a directory without model.safetensors or {INDEX}")
    if path.name.endswith(".index.json"):
        return _with_masks(_sharded(path), path.parent)
    if path.suffix == ".npz":
        raise ValueError(f"{path}: an npz archive (--format npz); the eoi package reads safetensors output: generate it with --format safetensors, or read the archive with numpy.load")
    tensors = _file(path)
    weights = tensors.metadata.get("eoi.weights")
    if weights is not None:
        # The masks file of a --masks pair: read the pair from its weights output.
        return load(path.parent / weights)
    return _with_masks(tensors, path.parent)


def from_bytes(data: bytes | bytearray, source: str) -> Tensors:
    """Tensors of the safetensors bytes `data` (read by the official `safetensors`), in file
    order; `source` names them in errors. bfloat16 needs `ml_dtypes`."""
    header = _header(data, source)
    metadata = header.pop("__metadata__", None) or {}
    try:
        items = dict(safetensors.deserialize(bytes(data) if not isinstance(data, bytes) else data))
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ValueError(f"{source}: not a safetensors file eoi can read: {e}") from e
    order = sorted(items, key=lambda name: header[name]["data_offsets"][0])
    return Tensors(((name, _array(name, items[name], source)) for name in order), metadata)


def parameters(tensors: Tensors) -> tuple[list[Parameter], Literal["torch", "flax"]]:
    """The artifact's parameters in file order, each layer's weight with its mask, and the
    layout its layers are stored in.

    The layers are the records of `eoi.layers`; without metadata (a plain dict), every `X`
    with an `X_mask` (and every `X_orig` with an `X_mask`, torch-prune names). Raises
    ValueError for a layer whose weight or mask is missing or misshapen.

    >>> import eoi
    >>> t = eoi.generate("seed = 1\\n[sparsity]\\ndensity = 0.5\\n[init]\\nbias_std = 0.1\\n"
    ...                  "[[layer]]\\nname = 'fc.weight'\\nshape = [8, 4]\\n", names="torch-prune")
    >>> sorted(t)
    ['fc.bias', 'fc.weight_mask', 'fc.weight_orig']
    >>> found, layout = eoi.parameters(t)
    >>> [(p.name, p.value.shape, None if p.mask is None else p.mask.dtype) for p in found], layout
    ([('fc.weight', (8, 4), dtype('bool')), ('fc.bias', (8,), None)], 'torch')
    """
    meta = tensors.metadata
    suffix = meta.get("eoi.mask_suffix", "_mask")
    prune_names = meta.get("eoi.names") == "torch-prune"
    layout: Literal["torch", "flax"] = "flax" if meta.get("eoi.layout", meta.get("format")) == "flax" else "torch"
    if "eoi.layers" in meta:
        layers = [record["name"] for record in tensors.layers]
    else:
        prune_names = any(name.endswith("_orig") and name[:-5] + "_mask" in tensors for name in tensors)
        if prune_names:
            layers = [name[:-5] for name in tensors if name.endswith("_orig") and name[:-5] + "_mask" in tensors]
        else:
            layers = [name for name in tensors if name + suffix in tensors]
    stored = {layer: ((layer + "_orig", layer + "_mask") if prune_names else (layer, layer + suffix)) for layer in layers}
    by_weight = {weight: (layer, mask) for layer, (weight, mask) in stored.items()}
    masks = {mask for _, mask in stored.values()}
    found: list[Parameter] = []
    for name, value in tensors.items():
        if name in masks:
            continue
        if name not in by_weight:
            found.append(Parameter(name, value, None))
            continue
        layer, mask_name = by_weight[name]
        mask = tensors.get(mask_name)
        if mask is None:
            raise ValueError(f"the artifact has layer {layer} ({name}) without its mask {mask_name}")
        if mask.shape != value.shape:
            raise ValueError(f"the artifact's mask {mask_name} has shape {list(mask.shape)}, its weight {name} {list(value.shape)}")
        found.append(Parameter(layer, value, np.asarray(mask) != 0))
    missing = [weight for weight in by_weight if weight not in tensors]
    if missing:
        raise ValueError(f"the artifact records layer(s) {', '.join(missing)} but holds no such tensor")
    return found, layout


def to_flax(weight: np.ndarray) -> np.ndarray:
    """A weight in PyTorch's order, (out, in) or (out, in, k...), in Flax's: (in, out) or
    (k..., in, out).

    >>> to_flax(np.zeros((8, 3, 5, 5))).shape
    (5, 5, 3, 8)
    """
    n = weight.ndim
    return weight if n < 2 else np.ascontiguousarray(np.transpose(weight, (*range(2, n), 1, 0)))


def to_torch(weight: np.ndarray) -> np.ndarray:
    """A weight in Flax's order, (in, out) or (k..., in, out), in PyTorch's: (out, in) or
    (out, in, k...); the inverse of `to_flax`.

    >>> to_torch(np.zeros((5, 5, 3, 8))).shape
    (8, 3, 5, 5)
    """
    n = weight.ndim
    return weight if n < 2 else np.ascontiguousarray(np.transpose(weight, (n - 1, n - 2, *range(n - 2))))


def _header(data: bytes | bytearray, source: str) -> dict[str, Any]:
    """The JSON header of safetensors bytes (the official reader checks the rest)."""
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n > len(data) - 8:
            raise ValueError(f"{len(data)} bytes, too few for the header it announces")
        header = json.loads(bytes(data[8 : 8 + n]))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        return header
    except ValueError as e:
        raise ValueError(f"{source}: not a safetensors file: {e}") from e


def _array(name: str, view: Mapping[str, Any], source: str) -> np.ndarray:
    dtype = view["dtype"]
    if dtype == "BF16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise ModuleNotFoundError(
                f"{source}: tensor {name} is bfloat16 (BF16), which NumPy reads only with the ml_dtypes package: "
                f"pip install ml_dtypes (jax installs it too), or ask eoi for another dtype",
                name="ml_dtypes",
            ) from e
        numpy_dtype: Any = ml_dtypes.bfloat16
    elif dtype in _DTYPES:
        numpy_dtype = _DTYPES[dtype]
    else:
        raise ValueError(f"{source}: tensor {name} has dtype {dtype}, which the eoi package does not read")
    return np.frombuffer(view["data"], dtype=numpy_dtype).reshape(view["shape"])


def _file(path: Path) -> Tensors:
    return from_bytes(path.read_bytes(), str(path))


def _sharded(index: Path) -> Tensors:
    """Every shard an index lists, put together; the layers of all shards in `eoi.layers`."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a safetensors index (a JSON object with a weight_map): {e}") from e
    shards = list(dict.fromkeys(weight_map.values()))
    merged = Tensors()
    records: list[Any] = []
    for shard in shards:
        tensors = _file(index.parent / shard)
        merged.update(tensors)
        if not merged.metadata:
            merged.metadata = {k: v for k, v in tensors.metadata.items() if k != "eoi.shard"}
        records += tensors.layers
    if "eoi.layers" in merged.metadata:
        merged.metadata["eoi.layers"] = json.dumps(records)
    return merged


def _with_masks(tensors: Tensors, directory: Path) -> Tensors:
    """Adds the masks of a `--masks` pair (`eoi.masks`, relative to `directory`, where the
    weights are) as `NAME + suffix`."""
    recorded = tensors.metadata.get("eoi.masks")
    if recorded is None:
        return tensors
    masks_path = directory / recorded
    if not masks_path.is_file():
        raise FileNotFoundError(f"{masks_path}: the masks file the artifact records (eoi.masks) is missing; keep the pair together")
    masks = _file(masks_path)
    suffix = tensors.metadata.get("eoi.mask_suffix", "_mask")
    for name, mask in masks.items():
        if name not in tensors:
            raise ValueError(f"{masks_path}: mask {name} has no weight of that name in the artifact")
        if name + suffix in tensors:
            raise ValueError(f"{masks_path}: mask {name} is also in the weights output as {name + suffix}")
        tensors[name + suffix] = mask
    return tensors
