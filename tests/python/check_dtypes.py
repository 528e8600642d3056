#!/usr/bin/env python3
"""Independent check of eoi's half-precision weights and its mask dtypes.

  check_dtypes.py REFERENCE CANDIDATE

REFERENCE is a .safetensors file written with --dtype f64 and bool masks; CANDIDATE the same
spec and seed written with another --dtype and/or --mask-dtype, as a .safetensors file or an
npy directory. For every tensor of the reference:

  * a weight: the candidate's bits equal the reference's f64 values rounded once to the
    candidate's dtype, to nearest with ties to even: for f16 and f32 by NumPy's casts from
    float64 (which round once, from all 64 bits), for bf16 by the rounding written out below
    (NumPy has no bfloat16);
  * a mask: the candidate's values are the bool mask's 0 and 1, in the candidate's dtype.

Every dtype the official `safetensors` package can load (f16, f32, f64, u8, bool) is loaded
with it; bf16, which safetensors.numpy cannot load, is read from the raw file: the 8-byte
little-endian header length, the JSON header and the little-endian uint16 data at its
offsets. npy directories are read with numpy.load. Prints one JSON line
{"tensors": N, "failures": F, "dtypes": [...]} and exits 1 on any failure.
"""

import json
import os
import struct
import sys

import numpy as np
from safetensors import safe_open


def raw_safetensors(path):
    """{name: (dtype string, shape, raw bytes)} straight from the file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    return {
        name: (t["dtype"], t["shape"], data[8 + n + t["data_offsets"][0] : 8 + n + t["data_offsets"][1]])
        for name, t in header.items()
    }


def load(path):
    """{name: (eoi dtype name, array)}; bf16 arrays as their uint16 bits."""
    if os.path.isdir(path):
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        return {
            t["name"]: (t["dtype"], np.load(os.path.join(path, t["file"]), allow_pickle=False))
            for t in manifest["tensors"]
        }
    raw = raw_safetensors(path)
    out = {}
    with safe_open(path, framework="np") as f:
        for name, (dtype, shape, data) in raw.items():
            if dtype == "BF16":
                out[name] = ("bf16", np.frombuffer(data, dtype="<u2").reshape(shape))
            else:
                out[name] = (dtype.lower(), f.get_tensor(name))
    return out


def bf16_bits(x):
    """float64 -> bfloat16 bits, rounded once to nearest, ties to even: the significand
    (frexp: x = m 2^e, 1/2 <= |m| < 1) scaled to 8 bits and rounded by rint, which is exact
    and ties to even in float64. Valid in bfloat16's normal range, which every nonzero value
    here is in (checked)."""
    nonzero = np.abs(x[x != 0])
    assert nonzero.size == 0 or nonzero.min() >= 2.0**-126, "a value below bf16's normal range"
    m, e = np.frexp(x)
    y = np.ldexp(np.rint(np.ldexp(m, 8)), e - 8).astype(np.float32)  # exact: 8 bits fit
    return (y.view(np.uint32) >> 16).astype(np.uint16)


def main():
    reference = load(sys.argv[1])
    candidate = load(sys.argv[2])
    failures = []
    dtypes = set()
    for name, (ref_dtype, ref) in sorted(reference.items()):
        if name not in candidate:
            failures.append(f"{name}: missing from the candidate")
            continue
        dtype, got = candidate[name]
        dtypes.add(dtype)
        if list(got.shape) != list(ref.shape):
            failures.append(f"{name}: shape {list(got.shape)}, the reference has {list(ref.shape)}")
            continue
        if ref_dtype == "bool":
            want = {"bool": np.bool_, "u8": np.uint8, "f32": np.float32}[dtype]
            if got.dtype != want:
                failures.append(f"{name}: NumPy dtype {got.dtype}, expected {np.dtype(want)}")
            elif not np.array_equal(got, ref.astype(want)):
                failures.append(f"{name}: the mask's values differ from the bool mask's 0 and 1")
            continue
        assert ref.dtype == np.float64, f"{name}: the reference must be f64"
        if dtype == "bf16":
            expected, actual = bf16_bits(ref), got
        else:
            want = {"f16": np.float16, "f32": np.float32, "f64": np.float64}[dtype]
            if got.dtype != want:
                failures.append(f"{name}: NumPy dtype {got.dtype}, expected {np.dtype(want)}")
                continue
            uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
            expected = ref.astype(want).view(uint)
            actual = np.ascontiguousarray(got).view(uint)
        differ = int(np.count_nonzero(expected != actual))
        if differ:
            failures.append(f"{name}: {differ} of {ref.size} {dtype} values are not the f64 values rounded once")
    for name in sorted(set(candidate) - set(reference)):
        failures.append(f"{name}: not in the reference")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(json.dumps({"tensors": len(candidate), "failures": len(failures), "dtypes": sorted(dtypes)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
