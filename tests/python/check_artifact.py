#!/usr/bin/env python3
"""Independent checker of an eoi artifact, from the user's side.

Loads a .safetensors file (with the official `safetensors` package), an npy output
directory or an .npz archive (with `numpy`), and checks every layer its metadata describes:

  * the weight X and its mask X<mask_suffix> exist and have the layer's shape;
  * the mask is bool, the weight float32 or float64, finite;
  * no weight outside the mask is nonzero;
  * linear (rank 2): W W^T (rows <= cols) or W^T W (tall) equals gain^2 I;
  * conv (rank 3 to 5, PyTorch layout (out, in, k...)): every tap other than the centre
    ((k - 1) // 2 in every spatial dimension) is exactly zero, and the centre matrix is
    orthogonal as above;
  * scheme "approx-isometry" (not orthogonal: optimised towards it): the matrix (or centre
    matrix) has the relative Frobenius error ||G - gain^2 I||_F / ||gain^2 I||_F that the
    record's isometry_error states, to sqrt(n) * 4 u (1 + e) + 1e-12 with u the dtype's
    unit roundoff and n = min(rows, cols);
  * the record's nnz equals the number of ones in the mask (and its achieved_density is
    nnz / numel);
  * every tensor is a layer's weight or mask.

The orthogonality error is max |G - gain^2 I| computed in float64; it must not exceed
1e-5 (float32 weights) or 1e-12 (float64 weights), times max(1, gain^2).

Prints a short report, then one JSON line
  {"tensors": N, "layers": L, "max_orthogonality_error": x, "isometry_layers": A,
   "failures": F}
on stdout, and exits 1 if anything failed (each failure names its tensor on stderr).

  check_artifact.py ARTIFACT [-v]        check, -v lists every layer
  check_artifact.py --dump-sha256 ARTIFACT
      print one JSON object {name: {"sha256", "dtype", "shape"}} with the SHA-256 of
      np.ascontiguousarray(a).tobytes() for every tensor (the bytes in C order)
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
from safetensors import safe_open

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}
TRANSFORMERS_FORMATS = {"pt", "tf", "flax", "mlx"}


class Artifact:
    """Every tensor of an artifact as a NumPy array, and its provenance."""

    def __init__(self, path):
        self.path = path
        self.problems = []  # (subject, message) found while loading
        self.isometry_layers = 0  # approx-isometry layers checked against their records
        if os.path.isdir(path):
            self.kind = "npy"
            self._load_npy(path)
        elif path.endswith(".npz"):
            self.kind = "npz"
            self._load_npz(path)
        else:
            self.kind = "safetensors"
            self._load_safetensors(path)

    def _load_safetensors(self, path):
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            self.tensors = {name: f.get_tensor(name) for name in f.keys()}
        self.metadata = metadata
        fmt = metadata.get("format")
        if fmt not in TRANSFORMERS_FORMATS:
            self.problems.append(
                ("__metadata__", f"'format' is {fmt!r}, expected one of {sorted(TRANSFORMERS_FORMATS)}")
            )
        for key in ("eoi.version", "eoi.stream_version", "eoi.seed", "eoi.spec", "eoi.layers"):
            if key not in metadata:
                self.problems.append(("__metadata__", f"key {key!r} is missing"))
        self.version = metadata.get("eoi.version")
        self.seed = metadata.get("eoi.seed")
        self.mask_suffix = metadata.get("eoi.mask_suffix", "_mask")
        try:
            self.layers = json.loads(metadata.get("eoi.layers", "[]"))
        except json.JSONDecodeError as e:
            self.problems.append(("__metadata__", f"'eoi.layers' is not JSON: {e}"))
            self.layers = []

    def _load_npy(self, path):
        manifest_path = os.path.join(path, "manifest.json")
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        self.metadata = manifest
        for key in ("eoi_version", "stream_version", "seed", "spec", "layers", "tensors"):
            if key not in manifest:
                self.problems.append(("manifest.json", f"key {key!r} is missing"))
        self.version = manifest.get("eoi_version")
        self.seed = manifest.get("seed")
        self.mask_suffix = manifest.get("mask_suffix", "_mask")
        self.layers = manifest.get("layers", [])
        self.tensors = {}
        listed = set()
        for entry in manifest.get("tensors", []):
            name, file = entry["name"], entry["file"]
            listed.add(file)
            a = np.load(os.path.join(path, file), allow_pickle=False)
            if list(a.shape) != list(entry["shape"]):
                self.problems.append((name, f"{file} has shape {list(a.shape)}, manifest says {entry['shape']}"))
            want = {"f32": "float32", "f64": "float64", "bool": "bool"}.get(entry["dtype"], entry["dtype"])
            if a.dtype.name != want:
                self.problems.append((name, f"{file} has dtype {a.dtype.name}, manifest says {entry['dtype']}"))
            self.tensors[name] = a
        for file in sorted(os.listdir(path)):
            if file.endswith(".npy") and file not in listed:
                self.problems.append((file, "an .npy file that manifest.json does not list"))


    def _load_npz(self, path):
        with np.load(path, allow_pickle=False) as z:
            manifest = json.loads(z["manifest.json"]) if "manifest.json" in z.files else {}
            self.tensors = {name: z[name] for name in z.files if name != "manifest.json"}
        self.metadata = manifest
        for key in ("eoi_version", "stream_version", "seed", "spec", "layers", "tensors"):
            if key not in manifest:
                self.problems.append(("manifest.json", f"key {key!r} is missing"))
        self.version = manifest.get("eoi_version")
        self.seed = manifest.get("seed")
        self.mask_suffix = manifest.get("mask_suffix", "_mask")
        self.layers = manifest.get("layers", [])
        listed = [t["name"] for t in manifest.get("tensors", [])]
        if listed != list(self.tensors):
            self.problems.append(("manifest.json", "its tensors are not the archive's .npy members in order"))


def orthogonality_error(matrix, gain):
    """max |G - gain^2 I| with G the Gram matrix of the shorter side, in float64."""
    m = np.ascontiguousarray(matrix, dtype=np.float64)
    rows, cols = m.shape
    gram = m @ m.T if rows <= cols else m.T @ m
    gram[np.diag_indices_from(gram)] -= gain * gain
    return float(np.max(np.abs(gram))) if gram.size else 0.0


def isometry_error(matrix, gain):
    """||G - gain^2 I||_F / ||gain^2 I||_F with G the Gram matrix of the shorter side."""
    m = np.ascontiguousarray(matrix, dtype=np.float64)
    rows, cols = m.shape
    gram = m @ m.T if rows <= cols else m.T @ m
    gram[np.diag_indices_from(gram)] -= gain * gain
    return float(np.linalg.norm(gram) / (gain * gain * np.sqrt(min(rows, cols))))


def check_layer(art, record, fail):
    """Checks one layer; returns its orthogonality error (None if it could not be measured)."""
    name = record.get("name")
    mask_name = f"{name}{art.mask_suffix}"
    w = art.tensors.get(name)
    m = art.tensors.get(mask_name)
    if w is None:
        fail(name, "the layer's weight tensor is missing")
    if m is None:
        fail(mask_name, "the layer's mask tensor is missing")
    if w is None or m is None:
        return None
    shape = list(record.get("shape", []))
    if list(w.shape) != shape:
        fail(name, f"shape {list(w.shape)}, the layer record says {shape}")
        return None
    if m.shape != w.shape:
        fail(mask_name, f"shape {list(m.shape)} differs from the weight's {list(w.shape)}")
        return None
    if m.dtype != np.bool_:
        fail(mask_name, f"dtype {m.dtype}, expected bool")
        return None
    if w.dtype not in TOLERANCE:
        fail(name, f"dtype {w.dtype}, expected float32 or float64")
        return None
    if not np.all(np.isfinite(w)):
        fail(name, "has non-finite values")
        return None

    nnz = int(np.count_nonzero(m))
    outside = int(np.count_nonzero(w[~m]))
    if outside:
        fail(name, f"{outside} nonzero weight(s) outside the mask {mask_name}")
    if record.get("nnz") != nnz:
        fail(mask_name, f"holds {nnz} ones, the layer record says nnz = {record.get('nnz')}")
    numel = w.size
    achieved = record.get("achieved_density")
    if not isinstance(achieved, (int, float)) or abs(achieved - nnz / numel) > 1e-12:
        fail(name, f"achieved_density {achieved} is not nnz / numel = {nnz / numel}")

    gain = record.get("gain")
    if not isinstance(gain, (int, float)) or not gain > 0:
        fail(name, f"the layer record has no valid gain ({gain!r})")
        return None

    if w.ndim == 2:
        if record.get("kind") not in (None, "linear"):
            fail(name, f"rank 2 but the layer record says kind {record.get('kind')!r}")
        matrix = w
    elif 3 <= w.ndim <= 5:
        if record.get("kind") not in (None, "conv"):
            fail(name, f"rank {w.ndim} but the layer record says kind {record.get('kind')!r}")
        out, inp, kernel = w.shape[0], w.shape[1], w.shape[2:]
        centre = tuple((k - 1) // 2 for k in kernel)
        taps = np.ascontiguousarray(w).reshape(out, inp, -1)
        c = int(np.ravel_multi_index(centre, kernel))
        off_centre = int(np.count_nonzero(taps[:, :, :c])) + int(np.count_nonzero(taps[:, :, c + 1 :]))
        if off_centre:
            fail(name, f"{off_centre} nonzero weight(s) off the centre tap {centre}")
        matrix = taps[:, :, c]
        centre_nnz = record.get("centre_nnz")
        if centre_nnz is not None:
            in_mask = int(np.count_nonzero(np.ascontiguousarray(m).reshape(out, inp, -1)[:, :, c]))
            if not int(np.count_nonzero(matrix)) <= centre_nnz <= in_mask:
                fail(
                    name,
                    f"centre_nnz {centre_nnz} is not between the centre's nonzeros "
                    f"({np.count_nonzero(matrix)}) and its mask ones ({in_mask})",
                )
    else:
        fail(name, f"rank {w.ndim}; a weight has rank 2 (linear) or 3 to 5 (conv)")
        return None

    if record.get("scheme") == "approx-isometry":
        recorded = record.get("isometry_error")
        if not isinstance(recorded, (int, float)):
            fail(name, f"an approx-isometry record without a numeric isometry_error ({recorded!r})")
            return None
        err = isometry_error(matrix, float(gain))
        n = min(matrix.shape)
        tol = np.sqrt(n) * 4 * UNIT_ROUNDOFF[w.dtype] * (1 + recorded) + 1e-12
        if not abs(err - recorded) <= tol:
            fail(name, f"isometry error {err:.6e}, the record says {recorded:.6e} (tolerance {tol:.1e})")
        art.isometry_layers += 1
        return None

    err = orthogonality_error(matrix, float(gain))
    tol = TOLERANCE[w.dtype] * max(1.0, float(gain) ** 2)
    if not err <= tol:
        what = "the centre matrix" if w.ndim > 2 else "the matrix"
        fail(name, f"{what} is not orthogonal with gain {gain}: max |G - gain^2 I| = {err:.3e} > {tol:.1e}")
    return err


def check(path, verbose):
    art = Artifact(path)
    failures = []

    def fail(subject, message):
        failures.append((subject, message))

    for subject, message in art.problems:
        fail(subject, message)

    print(f"{art.kind} artifact {path}: eoi {art.version}, seed {art.seed}, mask suffix {art.mask_suffix!r}")
    described = set()
    max_err = 0.0
    worst = None
    dtypes = set()
    for record in art.layers:
        name = record.get("name")
        described.update({name, f"{name}{art.mask_suffix}"})
        err = check_layer(art, record, fail)
        w = art.tensors.get(name)
        if w is not None:
            dtypes.add(w.dtype.name)
        if err is not None and err >= max_err:
            max_err, worst = err, name
        if verbose:
            shape = "x".join(str(d) for d in record.get("shape", []))
            err_text = "-" if err is None else f"{err:.2e}"
            print(f"  {name:<40} {record.get('kind', '?'):<6} {shape:<16} nnz {record.get('nnz')!s:<9} "
                  f"gain {record.get('gain')!s:<8} orthogonality error {err_text}")
    if not art.layers:
        fail(path, "the artifact describes no layers")
    for name in sorted(set(art.tensors) - described):
        fail(name, "a tensor that no layer record describes")

    print(f"  {len(art.tensors)} tensors, {len(art.layers)} layers, weights {', '.join(sorted(dtypes)) or '-'}")
    print(f"  max orthogonality error {max_err:.3e}" + (f" ({worst})" if worst else ""))
    for subject, message in failures:
        print(f"FAIL {subject}: {message}", file=sys.stderr)
    print("OK" if not failures else f"FAILED: {len(failures)} problem(s)")
    print(json.dumps({
        "tensors": len(art.tensors),
        "layers": len(art.layers),
        "max_orthogonality_error": max_err,
        "isometry_layers": art.isometry_layers,
        "failures": len(failures),
    }))
    return 1 if failures else 0


def dump_sha256(path):
    art = Artifact(path)
    out = {}
    for name, a in art.tensors.items():
        a = np.ascontiguousarray(a)
        out[name] = {
            "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
            "dtype": a.dtype.name,
            "shape": list(a.shape),
        }
    print(json.dumps(out, sort_keys=True))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", help="a .safetensors file or an npy output directory")
    parser.add_argument("--dump-sha256", action="store_true",
                        help="print the SHA-256 of every tensor's C-order bytes as JSON and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every layer")
    args = parser.parse_args()
    try:
        if args.dump_sha256:
            return dump_sha256(args.artifact)
        return check(args.artifact, args.verbose)
    except Exception as e:  # a file that cannot be read is a failure, not a crash
        print(f"FAIL {args.artifact}: cannot load: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
