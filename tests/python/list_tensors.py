#!/usr/bin/env python3
"""Lists safetensors files as the official safetensors package reads them (tests/it/names.rs,
tests/it/masks.rs and tests/it/base.rs run it).

    list_tensors.py FILE...

For each FILE, loaded with safetensors.safe_open (numpy) and every tensor read with
get_tensor: its `__metadata__` and, for every tensor, the NumPy dtype, the shape and the
SHA-256 of its bytes (numpy's tobytes, C order). Prints one JSON object
{FILE: {"metadata": {...}, "tensors": {name: {"dtype", "shape", "sha256"}}}}.
"""

import hashlib
import json
import sys

from safetensors import safe_open


def describe(path):
    tensors = {}
    with safe_open(path, framework="np") as f:
        metadata = f.metadata() or {}
        for name in f.keys():
            a = f.get_tensor(name)
            tensors[name] = {
                "dtype": str(a.dtype),
                "shape": list(a.shape),
                "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
            }
    return {"metadata": metadata, "tensors": tensors}


def main():
    print(json.dumps({path: describe(path) for path in sys.argv[1:]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
