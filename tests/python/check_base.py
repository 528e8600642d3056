#!/usr/bin/env python3
"""Checks an `eoi generate --base` output against its base with the official safetensors
package (tests/it/base.rs runs it).

    check_base.py BASE OUT REPLACED...

BASE and OUT are safetensors files, or model.safetensors.index.json files of sharded
checkpoints. Every tensor of BASE not named in REPLACED must be in OUT with the same dtype,
shape and bytes; every REPLACED tensor must be in OUT with its shape and a mask
(NAME_mask) beside it; nothing else may be in OUT. For sharded checkpoints, each tensor must
be in the shard of the same name, and OUT's index must map every tensor to its shard.
Prints "ok" and exits 0, or prints every difference and exits 1.
"""

import json
import os
import sys

from safetensors import safe_open


def files(path):
    """{tensor: shard path} of a file or an index."""
    if path.endswith(".index.json"):
        with open(path) as f:
            index = json.load(f)
        directory = os.path.dirname(path)
        return {t: os.path.join(directory, shard) for t, shard in index["weight_map"].items()}
    with safe_open(path, framework="np") as f:
        return {t: path for t in f.keys()}


def shard_name(path, shard):
    """The shard's file name for a sharded checkpoint; "" for a single file."""
    return os.path.basename(shard) if path.endswith(".index.json") else ""


def tensors(path):
    """{tensor: (dtype, shape, bytes, shard name)} read through safe_open (numpy)."""
    out = {}
    by_file = {}
    for name, shard in files(path).items():
        by_file.setdefault(shard, []).append(name)
    for shard, names in by_file.items():
        with safe_open(shard, framework="np") as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise SystemExit(f"{shard}: the index lists {name}, the shard lacks it")
                a = f.get_tensor(name)
                out[name] = (str(a.dtype), tuple(a.shape), a.tobytes(), shard_name(path, shard))
            if present != set(names):
                raise SystemExit(f"{shard}: holds tensors the index does not list: {sorted(present - set(names))}")
    return out


def main():
    base_path, out_path, replaced = sys.argv[1], sys.argv[2], set(sys.argv[3:])
    base, out = tensors(base_path), tensors(out_path)
    problems = []
    expected = set()
    for name, (dtype, shape, data, shard) in base.items():
        if name in replaced:
            expected |= {name, name + "_mask"}
            got = out.get(name)
            if got is None or got[1] != shape or out.get(name + "_mask", (0, None))[1] != shape:
                problems.append(f"{name}: not replaced by a weight and mask of shape {shape}")
            elif got[3] != shard:
                problems.append(f"{name}: in shard {got[3]}, the base has it in {shard}")
            continue
        expected.add(name)
        got = out.get(name)
        if got is None:
            problems.append(f"{name}: missing from the output")
        elif got != (dtype, shape, data, shard):
            problems.append(f"{name}: differs ({got[0]} {got[1]} in {got[3]} vs {dtype} {shape} in {shard}, bytes equal: {got[2] == data})")
    extra = set(out) - expected
    if extra:
        problems.append(f"tensors in the output that should not be: {sorted(extra)}")
    if problems:
        print("\n".join(problems))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
