#!/usr/bin/env python3
"""Singular values of a convolution layer as an operator on periodic N x N inputs.

    python examples/conv_spectrum.py init.safetensors features.2.1.block.1.0.weight --groups 144
    python examples/conv_spectrum.py init.safetensors conv1.weight --grid 16 --json

A 2-D convolution with periodic boundary is diagonalised by the 2-D DFT: at each of the
N x N frequencies w it acts on the channels as the matrix K(w) = sum over taps t of
W[:, :, t] exp(-i <w, t>), so its singular values are those of every K(w). A grouped
convolution (PyTorch's `groups`, weight (out, in/G, kh, kw)) is block diagonal over the
groups: group g's block is the weight's rows g out/G .. (g + 1) out/G, seen by its own in/G
inputs. The script prints the minimum, mean and maximum singular value over all
frequencies and groups (an exactly orthogonal layer times gain g has all of them equal to g).
The weight is read with numpy and safetensors (tensor `LAYER`, times its mask `LAYER_mask`
if the file has one). Needs numpy and safetensors.
"""

import argparse
import json
import sys

import numpy as np
from safetensors.numpy import load_file


def singular_values(weight: np.ndarray, groups: int, grid: int) -> np.ndarray:
    """Every singular value of the periodic grouped convolution by `weight` on grid x grid."""
    out, per_group, kh, kw = weight.shape
    if out % groups:
        raise ValueError(f"groups = {groups} does not divide out = {out}")
    if grid < max(kh, kw):
        raise ValueError(f"the grid ({grid}) must be at least the kernel size ({kh}x{kw})")
    rows = out // groups
    values = []
    for g in range(groups):
        block = weight[g * rows : (g + 1) * rows].astype(np.float64)
        # K(w) for every frequency at once: the DFT of the kernel zero-padded to the grid.
        padded = np.zeros((rows, per_group, grid, grid))
        padded[:, :, :kh, :kw] = block
        spectrum = np.fft.fft2(padded, axes=(2, 3))  # (rows, in/G, grid, grid)
        matrices = spectrum.transpose(2, 3, 0, 1).reshape(grid * grid, rows, per_group)
        values.append(np.linalg.svd(matrices, compute_uv=False).ravel())
    return np.concatenate(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a safetensors file")
    parser.add_argument("layer", help="the weight's name, shape (out, in/G, kh, kw)")
    parser.add_argument("--groups", type=int, default=1, help="convolution groups (default 1)")
    parser.add_argument("--grid", type=int, default=8, help="N of the N x N periodic input (default 8)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    tensors = load_file(args.file)
    if args.layer not in tensors:
        print(f"error: {args.file} has no tensor {args.layer!r}", file=sys.stderr)
        return 2
    weight = tensors[args.layer]
    if weight.ndim != 4:
        print(f"error: {args.layer} has shape {weight.shape}; a 2-D convolution's weight has 4 dimensions", file=sys.stderr)
        return 2
    mask = tensors.get(args.layer + "_mask")
    if mask is not None:
        weight = weight * mask
    try:
        s = singular_values(weight, args.groups, args.grid)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {
        "layer": args.layer,
        "shape": list(weight.shape),
        "groups": args.groups,
        "grid": args.grid,
        "count": int(s.size),
        "min": float(s.min()),
        "mean": float(s.mean()),
        "max": float(s.max()),
        "zero": int((s < 1e-12).sum()),
    }
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(
            f"{args.layer} {tuple(weight.shape)} groups={args.groups} on {args.grid}x{args.grid}: "
            f"{s.size} singular values, min {s.min():.6g}, mean {s.mean():.6g}, max {s.max():.6g}"
            f" ({result['zero']} zero)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
