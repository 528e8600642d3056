#!/usr/bin/env python3
"""Independent reference for `eoi isometry` (tests/it/isometry.rs), with NumPy and the
official `safetensors` package.

  isometry_reference.py write-chain OUT [zero-first]
      writes a safetensors file of Gaussian weights net.0.weight, net.2.weight, ...,
      net.10.weight (float64, shapes that compose only in natural name order: net.10
      follows net.8) and biases net.K.bias; prints the names in chain order as JSON.
      With zero-first, net.0.weight is all zeros (for `signal`).

  isometry_reference.py jacobian FILE NAME...
      the linear chain of the named (out, in) weights, in the order given:
      J = W_L @ ... @ W_1 in float64, and prints JSON {"rows", "cols",
      "singular_mean_sq", "singular_std", "singular_max", "singular_min"} from
      np.linalg.svd.

  isometry_reference.py signal FILE NAME...
      the tanh chain x <- tanh(W x + b) started from x = 0 in front of the first layer,
      whose weight the test makes zero so that no input is needed: prints the RMS of x
      after every layer as JSON [rms_1, ..., rms_L].
"""

import json
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def write_chain(out, zero_first=None):
    rng = np.random.default_rng(2024)
    # Widths in, then after each layer; layer k is named net.{2k}.weight.
    widths = [12, 20, 16, 24, 14, 30, 10]
    tensors, names = {}, []
    for k in range(len(widths) - 1):
        fan_in, fan_out = widths[k], widths[k + 1]
        name = f"net.{2 * k}"
        w = rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)
        if k == 0 and zero_first == "zero-first":
            w = np.zeros_like(w)
        tensors[f"{name}.weight"] = np.ascontiguousarray(w)
        tensors[f"{name}.bias"] = rng.standard_normal(fan_out) * 0.1
        names.append(f"{name}.weight")
    save_file(tensors, out)
    print(json.dumps(names))


def weights(path, names):
    t = load_file(path)
    return t, [t[n].astype(np.float64) for n in names]


def jacobian(path, names):
    _, ws = weights(path, names)
    j = np.eye(ws[0].shape[1])
    for w in ws:
        j = w @ j
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
            }
        )
    )


def signal(path, names):
    t, ws = weights(path, names)
    x = np.zeros(ws[0].shape[1])
    rms = []
    for name, w in zip(names, ws):
        bias_name = name[: -len(".weight")] + ".bias"
        b = t[bias_name].astype(np.float64) if bias_name in t else 0.0
        x = np.tanh(w @ x + b)
        rms.append(float(np.sqrt(np.mean(x**2))))
    print(json.dumps(rms))


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "write-chain":
        write_chain(*args)
    elif command == "jacobian":
        jacobian(args[0], args[1:])
    elif command == "signal":
        signal(args[0], args[1:])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
