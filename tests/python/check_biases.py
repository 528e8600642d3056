#!/usr/bin/env python3
"""Independent check of eoi's biases with the official numpy and safetensors packages.

  check_biases.py ARTIFACT EXPECTED_JSON

ARTIFACT is a .safetensors file (loaded with safetensors.numpy.load_file), a sharded
directory (its model.safetensors.index.json, each shard loaded the same way), an npy
directory (numpy.load of each file its manifest.json lists) or a .npz archive (numpy.load).
EXPECTED_JSON maps each bias name to {"shape": [...], "dtype": "float32", "std": S}. For
each bias: the shape and the NumPy dtype; for S = 0 every value is exactly +0.0; otherwise
the mean square m of the n values satisfies, with x = 20 (chi-square tail bounds of Laurent
and Massart 2000, so a correct bias fails with probability below 2 e^-20):
    1 - 2 sqrt(x/n) <= m / S^2 <= 1 + 2 sqrt(x/n) + 2x/n.
Tensors named *.bias that are not expected are failures too. Prints one JSON line
{"biases": N, "failures": F} and exits 1 on any failure.
"""

import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file

X = 20.0


def load(path):
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files if name != "manifest.json"}
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            out = {}
            for name in files:
                out.update(load_file(os.path.join(path, name)))
            return out
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        return {t["name"]: np.load(os.path.join(path, t["file"]), allow_pickle=False) for t in manifest["tensors"]}
    return load_file(path)


def main():
    tensors = load(sys.argv[1])
    expected = json.loads(sys.argv[2])
    failures = []
    for name, want in sorted(expected.items()):
        if name not in tensors:
            failures.append(f"{name}: missing")
            continue
        b = tensors[name]
        if list(b.shape) != want["shape"] or b.dtype != np.dtype(want["dtype"]):
            failures.append(f"{name}: {b.dtype} {list(b.shape)}, expected {want['dtype']} {want['shape']}")
            continue
        values = b.astype(np.float64)
        std = want["std"]
        if std == 0:
            if np.any(values != 0) or np.any(np.signbit(values)):
                failures.append(f"{name}: std 0 but not all values are +0.0")
            continue
        n = values.size
        ratio = float(np.mean(values**2)) / std**2
        low, high = 1 - 2 * math.sqrt(X / n), 1 + 2 * math.sqrt(X / n) + 2 * X / n
        if not low <= ratio <= high:
            failures.append(f"{name}: mean square / std^2 = {ratio:.4f}, outside [{low:.4f}, {high:.4f}] for n = {n}")
    for name in sorted(set(t for t in tensors if t.endswith(".bias")) - set(expected)):
        failures.append(f"{name}: a bias that is not expected")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(json.dumps({"biases": len(expected), "failures": len(failures)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
