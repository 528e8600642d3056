"""The wheel and the installation: one version everywhere (Cargo.toml is its source), the
metadata of Cargo.toml, the binary on the PATH and behind `python -m eoi`, and the package
under test being the installed one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

import eoi
from conftest import REPO


def cargo_package() -> dict[str, str]:
    with open(REPO / "Cargo.toml", "rb") as f:
        package: dict[str, str] = tomllib.load(f)["package"]
    return package


@pytest.fixture(scope="module")
def wheel() -> Path:
    """The wheel these tests run from (EOI_WHEEL, set by tests/it/python_package.rs)."""
    path = os.environ.get("EOI_WHEEL")
    assert path, "EOI_WHEEL is not set: it names the wheel that was installed for these tests"
    return Path(path)


def wheel_metadata(wheel: Path) -> tuple[list[str], dict[str, list[str]]]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        [meta_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(z.read(meta_name).decode())
    fields: dict[str, list[str]] = {}
    for key, value in message.items():
        fields.setdefault(key, []).append(value)
    return names, fields


def test_the_package_and_the_binary_under_test_are_the_installed_ones(cli: str) -> None:
    assert "EOI_BINARY" not in os.environ, "EOI_BINARY would point the package at another binary"
    site = {Path(sysconfig.get_path("purelib")).resolve(), Path(sysconfig.get_path("platlib")).resolve()}
    assert Path(eoi.__file__).resolve().parent.parent in site, f"eoi imported from {eoi.__file__}, not from {site}"
    scripts = Path(sysconfig.get_path("scripts"))
    assert eoi.binary() == eoi.find_binary() == scripts / "eoi"
    assert Path(cli) == scripts / "eoi", f"the eoi on the PATH is {cli}"
    assert "target" not in Path(cli).resolve().parts


def test_one_version_from_cargo_toml_everywhere(cli: str, wheel: Path) -> None:
    cargo = cargo_package()["version"]
    printed = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True).stdout
    via_module = subprocess.run([sys.executable, "-m", "eoi", "--version"], capture_output=True, text=True, check=True).stdout
    assert printed == via_module
    assert printed.startswith(f"eoi {cargo} "), printed
    _, fields = wheel_metadata(wheel)
    assert fields["Version"] == [eoi.__version__] == [metadata.version("eoi")]
    # maturin writes Cargo's SemVer in PEP 440's spelling (1.0.0-alpha.1 as 1.0.0a1).
    assert Version(eoi.__version__) == Version(cargo)
    assert wheel.name.startswith(f"eoi-{eoi.__version__}-")


def test_the_wheel_has_the_binary_the_package_and_the_metadata_of_cargo_toml(wheel: Path) -> None:
    names, fields = wheel_metadata(wheel)
    version = eoi.__version__
    assert f"eoi-{version}.data/scripts/eoi" in names
    package = sorted(n for n in names if n.startswith("eoi/"))
    assert package == sorted(
        f"eoi/{f}" for f in ["__init__.py", "__main__.py", "_artifact.py", "_binary.py", "_run.py", "_toml.py", "flax.py", "optax.py", "torch.py", "py.typed"]
    ), package
    assert not [n for n in names if "tests" in n.split("/")], "the tests are not part of the wheel"
    cargo = cargo_package()
    assert fields["Name"] == [cargo["name"]]
    assert fields["Summary"] == [cargo["description"]]
    assert fields["License-Expression"] == [cargo["license"]]
    assert fields["Requires-Python"] == [">=3.10"]
    assert "Programming Language :: Rust" in fields["Classifier"]
    assert "Typing :: Typed" in fields["Classifier"]
    always = [d for d in fields["Requires-Dist"] if "extra ==" not in d]
    assert sorted(always) == ["numpy>=1.26", "safetensors>=0.4"], always


def test_python_m_eoi_passes_arguments_streams_and_exit_codes_through(tmp_path: Path, cli: str) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('seed = 1\n[sparsity]\ndensity = 0.5\n[[layer]]\nname = "fc.weight"\nshape = [8, 8]\n')
    direct = subprocess.run([cli, "plan", spec, "--json", "--seed", "3"], capture_output=True)
    module = subprocess.run([sys.executable, "-m", "eoi", "plan", spec, "--json", "--seed", "3"], capture_output=True)
    assert (module.returncode, module.stdout) == (direct.returncode, direct.stdout) == (0, direct.stdout)
    # Standard input, and the bytes of a generated file.
    out = subprocess.run([sys.executable, "-m", "eoi", "generate", "-", "-o", tmp_path / "a.safetensors", "-q"], input=spec.read_bytes(), capture_output=True)
    assert out.returncode == 0, out.stderr
    subprocess.run([cli, "generate", spec, "-o", tmp_path / "b.safetensors", "-q"], check=True)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    # A refused spec: exit code 2 and eoi's message on standard error, nothing on standard output.
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = 1\n[sparsity]\ndensity = 1.5\n")
    refused = subprocess.run([sys.executable, "-m", "eoi", "plan", bad], capture_output=True, text=True)
    direct = subprocess.run([cli, "plan", bad], capture_output=True, text=True)
    assert refused.returncode == direct.returncode == 2
    assert refused.stderr == direct.stderr and "density" in refused.stderr and "bad.toml" in refused.stderr
    assert refused.stdout == ""
    # Help goes to standard output with exit code 0, as the binary's.
    helped = subprocess.run([sys.executable, "-m", "eoi", "generate", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and helped.stdout == subprocess.run([cli, "generate", "--help"], capture_output=True, text=True).stdout


def test_python_m_eoi_without_the_binary_says_where_it_looked(tmp_path: Path) -> None:
    # The package alone, copied where no binary is beside it, run with -I (isolated: no
    # site-packages, no user site) so the venv's scripts directory is still where
    # sysconfig points; sysconfig is pointed elsewhere with a fake prefix instead.
    package = Path(eoi.__file__).parent
    shutil.copytree(package, tmp_path / "eoi")
    code = (
        "import sys, sysconfig\n"
        f"sysconfig.get_path = lambda name, scheme=None: {str(tmp_path / 'nowhere')!r}\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "sys.argv = ['eoi', '--version']\n"
        "import runpy; runpy.run_module('eoi', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert done.returncode == 127, done
    assert "the eoi binary is not installed beside the eoi package" in done.stderr
    assert "nowhere" in done.stderr and "EOI_BINARY" in done.stderr
