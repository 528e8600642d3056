#!/usr/bin/env python3
"""Independent reference for `eoi isometry --grid` (tests/it/isometry_conv.rs), with NumPy
and the official `safetensors` package.

  conv_isometry_reference.py write-chain OUT
      writes a safetensors file of a chain of 4 -> 4 two-dimensional convolutions in
      float64: conv.0 (3x3, groups 1), conv.1 (3x3, groups 2), conv.2 (3x3, depthwise),
      conv.3 (2x2, groups 1: an even kernel), conv.4 (5x5, groups 1), each with a bias
      conv.K.bias; prints the names in chain order as JSON.

  conv_isometry_reference.py jacobian FILE N INPUT PHI NAME...
      builds each convolution's dense (C N^2) x (C N^2) matrix on the periodic N x N grid
      from the definition (PyTorch's cross-correlation with circular padding: output
      position p reads input p + t - (k - 1) // 2, mod N, per axis; groups split the
      channels), pushes the input (a JSON list of C N^2 floats, channel-major) through
      x <- phi(M x + b), accumulates J = D_L M_L ... D_1 M_1, and prints JSON {"rows",
      "cols", "singular_mean_sq", "singular_std", "singular_max", "singular_min",
      "singular_sq_var", "signal_rms"} from np.linalg.svd. PHI: linear or tanh.
"""

import json
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

# (per-group inputs, kernel) of each 4 -> 4 layer.
LAYERS = [(4, 3), (2, 3), (1, 3), (4, 2), (4, 5)]
CHANNELS = 4


def write_chain(out):
    rng = np.random.default_rng(18)
    tensors, names = {}, []
    for i, (per_group, k) in enumerate(LAYERS):
        w = rng.standard_normal((CHANNELS, per_group, k, k)) / np.sqrt(per_group * k * k)
        tensors[f"conv.{i}.weight"] = np.ascontiguousarray(w)
        tensors[f"conv.{i}.bias"] = rng.standard_normal(CHANNELS) * 0.2
        names.append(f"conv.{i}.weight")
    save_file(tensors, out)
    print(json.dumps(names))


def dense(w, n):
    """The matrix of the circular convolution of weight w (out, in/groups, k, k) on n x n."""
    out, per_group, kh, kw = w.shape
    groups = CHANNELS // per_group
    per_out = out // groups
    side = CHANNELS * n * n
    m = np.zeros((out * n * n, side))
    for o in range(out):
        g = o // per_out
        for cl in range(per_group):
            c = g * per_group + cl
            for a in range(kh):
                for b in range(kw):
                    for r in range(n):
                        for s in range(n):
                            rr = (r + a - (kh - 1) // 2) % n
                            ss = (s + b - (kw - 1) // 2) % n
                            m[o * n * n + r * n + s, c * n * n + rr * n + ss] += w[o, cl, a, b]
    return m


def jacobian(path, n, input_path, phi, names):
    n = int(n)
    t = load_file(path)
    with open(input_path) as f:
        x = np.array(json.load(f), dtype=np.float64)
    j = np.eye(x.size)
    rms = [float(np.sqrt(np.mean(x**2)))]
    for name in names:
        m = dense(t[name].astype(np.float64), n)
        b = np.repeat(t[name[: -len(".weight")] + ".bias"].astype(np.float64), n * n)
        h = m @ x + b
        if phi == "tanh":
            x, slope = np.tanh(h), 1.0 - np.tanh(h) ** 2
        elif phi == "linear":
            x, slope = h, np.ones_like(h)
        else:
            sys.exit(f"unknown phi {phi}")
        j = slope[:, None] * (m @ j)
        rms.append(float(np.sqrt(np.mean(x**2))))
    s = np.linalg.svd(j, compute_uv=False)
    print(
        json.dumps(
            {
                "rows": j.shape[0],
                "cols": j.shape[1],
                "singular_mean_sq": float(np.mean(s**2)),
                "singular_std": float(np.std(s)),
                "singular_max": float(s.max()),
                "singular_min": float(s.min()),
                "singular_sq_var": float(np.var(s**2)),
                "signal_rms": rms,
            }
        )
    )


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "write-chain":
        write_chain(*args)
    elif command == "jacobian":
        jacobian(args[0], args[1], args[2], args[3], args[4:])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
