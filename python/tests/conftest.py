"""Shared fixtures of the eoi package's tests (python/tests).

These tests check the package as a user gets it: installed from the wheel into a fresh venv
(tests/it/python_package.rs builds the wheel from the checkout, installs it with its `test`
extra and runs them), so `import eoi` is the installed package and `eoi` on the PATH the
binary the wheel installed, never target/. Every package they import is required: a missing
one fails the run, nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: The repository the wheel was built from (for Cargo.toml, examples/ and specs/).
REPO = Path(os.environ.get("EOI_REPO") or Path(__file__).resolve().parents[2])

#: Three linear layers, the middle one square (a transposition would go unnoticed in its
#: shape), with biases.
MLP = """\
seed = 7

[sparsity]
density = 0.25
dense = ["fc3.weight"]

[init]
bias_std = 0.05

[[layer]]
name = "fc1.weight"
shape = [32, 16]

[[layer]]
name = "fc2.weight"
shape = [32, 32]

[[layer]]
name = "fc3.weight"
shape = [10, 32]
"""

#: Two 3x3 convolutions and a linear head, in PyTorch's naming.
CNN = """\
seed = 11

[sparsity]
density = 0.5

[[layer]]
name = "conv1.weight"
shape = [8, 3, 3, 3]

[[layer]]
name = "conv2.weight"
shape = [16, 8, 3, 3]

[[layer]]
name = "head.weight"
shape = [10, 16]
"""


@pytest.fixture(scope="session")
def cli() -> str:
    """The `eoi` command on the PATH: the binary the wheel installed in the venv."""
    found = shutil.which("eoi")
    assert found, "no eoi on the PATH: install the wheel (pip install .) into the venv running these tests"
    return found


def run_cli(*args: str | os.PathLike[str], input: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Runs the installed `eoi` command (not through the package) and requires success."""
    eoi = shutil.which("eoi")
    assert eoi
    done = subprocess.run([eoi, *map(os.fspath, args)], input=input.encode() if input else None, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    return done


@pytest.fixture
def mlp_spec(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.toml"
    path.write_text(MLP)
    return path


@pytest.fixture
def cnn_spec(tmp_path: Path) -> Path:
    path = tmp_path / "cnn.toml"
    path.write_text(CNN)
    return path
