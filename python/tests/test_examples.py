"""examples/load_jax.py, which uses the package, run as a user runs it with the installed
package and binary. (examples/load_torch.py needs PyTorch: python/tests_torch runs it.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def run_example(tmp_path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, REPO / "examples" / "load_jax.py", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    return done.stdout


def test_load_jax_loads_both_layouts_and_keeps_masked_weights_at_zero(tmp_path: Path) -> None:
    out = run_example(tmp_path)
    for line in [
        "ok    torch layout transposed on load equals eoi's flax layout",
        "ok    every tensor of the artifact found its parameter",
        "ok    weights outside the masks start at zero",
        "ok    weights outside the masks are still exactly zero after 3 AdamW steps",
        "into a 7-layer Flax MLP and trained it with fixed masks",
    ]:
        assert line in out, out


def test_load_jax_loads_biases_when_the_spec_has_bias_std(tmp_path: Path) -> None:
    spec = tmp_path / "biases.toml"
    spec.write_text(
        'seed = 3\n[sparsity]\ndensity = 0.25\n'
        '[[layer]]\nname = "net.0.weight"\nshape = [64, 32]\nbias_std = 0.05\n'
        '[[layer]]\nname = "net.2.weight"\nshape = [64, 64]\n'
        '[[layer]]\nname = "net.4.weight"\nshape = [10, 64]\nbias_std = 0\n'
    )
    out = run_example(tmp_path, "--spec", str(spec))
    for line in [
        "ok    2 of 3 Dense biases from the artifact (bias_std in the spec), the others left as initialized",
        "ok    weights outside the masks are still exactly zero after 3 AdamW steps",
        "into a 3-layer Flax MLP and trained it with fixed masks",
    ]:
        assert line in out, out
