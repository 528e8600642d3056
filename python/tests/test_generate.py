"""eoi.generate, eoi.plan and eoi.run against the installed binary: the arrays are those of
the file `eoi generate` writes (read by the official safetensors), whatever the form of the
spec and the options; errors carry eoi's message and exit code."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

import eoi
from conftest import CNN, MLP, run_cli


def generated_file(tmp_path: Path, spec: Path, *options: str) -> dict[str, np.ndarray]:
    out = tmp_path / "cli.safetensors"
    run_cli("generate", spec, "-o", out, "-q", "--force", *options)
    return load_file(out)


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == sorted(got, key=list(got).index)  # (an ordered dict)
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


def test_generate_from_a_path_a_toml_string_and_a_dict_gives_the_files_arrays(tmp_path: Path, mlp_spec: Path) -> None:
    want = generated_file(tmp_path, mlp_spec)
    from_path = eoi.generate(mlp_spec)
    assert_same(from_path, want)
    assert_same(eoi.generate(str(mlp_spec)), want)
    assert_same(eoi.generate(MLP), want)
    assert_same(eoi.generate(tomllib.loads(MLP)), want)
    assert sorted(want) == sorted(
        ["fc1.weight", "fc1.weight_mask", "fc1.bias", "fc2.weight", "fc2.weight_mask", "fc2.bias", "fc3.weight", "fc3.weight_mask", "fc3.bias"]
    )
    # The arrays are writable NumPy arrays, and the masks are bool with zeros outside them.
    w, m = from_path["fc2.weight"], from_path["fc2.weight_mask"]
    assert w.flags.writeable and m.dtype == np.bool_
    assert not w[~m].any() and m.mean() == pytest.approx(0.25, abs=0.05)
    assert np.allclose(w @ w.T, np.eye(32), atol=1e-5)


def test_generate_keeps_the_files_order_and_metadata(tmp_path: Path, mlp_spec: Path) -> None:
    t = eoi.generate(mlp_spec, seed=5)
    out = tmp_path / "o.safetensors"
    run_cli("generate", mlp_spec, "-o", out, "-q", "--seed", "5")
    data = out.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    metadata = header.pop("__metadata__")
    assert list(t) == sorted(header, key=lambda n: header[n]["data_offsets"][0])
    assert t.metadata == metadata
    assert t.metadata["eoi.seed"] == "5"
    assert [r["name"] for r in t.layers] == ["fc1.weight", "fc2.weight", "fc3.weight"]


@pytest.mark.parametrize(
    ("kwargs", "flags"),
    [
        ({"seed": 3}, ["--seed", "3"]),
        ({"scheme": "kaiming"}, ["--scheme", "kaiming"]),
        ({"dtype": "f64", "mask_dtype": "u8"}, ["--dtype", "f64", "--mask-dtype", "u8"]),
        ({"dtype": "f16", "mask_dtype": "f32"}, ["--dtype", "f16", "--mask-dtype", "f32"]),
        ({"layout": "flax"}, ["--layout", "flax"]),
        ({"names": "torch-prune"}, ["--names", "torch-prune"]),
        ({"threads": 1, "max_memory": "1GiB", "below_minimum": "clamp"}, ["--threads", "1", "--max-memory", "1GiB", "--below-minimum", "clamp"]),
    ],
)
def test_each_option_gives_what_the_flag_gives(tmp_path: Path, cnn_spec: Path, kwargs: dict[str, object], flags: list[str]) -> None:
    assert_same(eoi.generate(cnn_spec, **kwargs), generated_file(tmp_path, cnn_spec, *flags))  # type: ignore[arg-type]


def test_bf16_weights_are_ml_dtypes_bfloat16_with_the_files_bits(tmp_path: Path, cnn_spec: Path) -> None:
    t = eoi.generate(cnn_spec, dtype="bf16")
    out = tmp_path / "bf16.safetensors"
    run_cli("generate", cnn_spec, "-o", out, "-q", "--dtype", "bf16")
    data = out.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    for name in ["conv1.weight", "head.weight"]:
        assert header[name]["dtype"] == "BF16"
        assert t[name].dtype == ml_dtypes.bfloat16 and list(t[name].shape) == header[name]["shape"]
        start, end = header[name]["data_offsets"]
        assert t[name].tobytes() == data[8 + n + start : 8 + n + end]
    # bf16 rounds the f32 weights: within bf16's precision of them.
    f32 = eoi.generate(cnn_spec)
    assert np.allclose(t["head.weight"].astype(np.float32), f32["head.weight"], rtol=2**-8, atol=0)


def test_plan_is_plan_json(mlp_spec: Path) -> None:
    for kwargs, flags in [({}, []), ({"seed": 9, "scheme": "sao", "format": "npz", "below_minimum": "clamp"}, ["--seed", "9", "--scheme", "sao", "--format", "npz", "--below-minimum", "clamp"])]:
        want = json.loads(run_cli("plan", mlp_spec, "--json", *flags).stdout)
        assert eoi.plan(mlp_spec, **kwargs) == want  # type: ignore[arg-type]
        assert eoi.plan(MLP, **kwargs) == want  # type: ignore[arg-type]
    p = eoi.plan(tomllib.loads(MLP))
    assert [(layer["name"], layer["density"]) for layer in p["layers"]] == [("fc1.weight", 0.25), ("fc2.weight", 0.25), ("fc3.weight", 1.0)]


def test_a_refused_spec_raises_eoi_error_with_the_message_and_exit_code(tmp_path: Path, cli: str) -> None:
    bad = MLP.replace("density = 0.25", "density = 1.5")
    with pytest.raises(eoi.EoiError) as caught:
        eoi.generate(bad)
    e = caught.value
    direct = subprocess.run([cli, "generate", "-", "-o", "-", "-q"], input=bad.encode(), capture_output=True)
    assert e.exit_code == direct.returncode == 2
    assert e.message == direct.stderr.decode().strip()
    assert "<stdin>" in e.message and "density" in e.message
    assert e.command[1:] == ["generate", "-", "-o", "-", "-q"]
    assert str(e).startswith("eoi exited with 2: error:")

    # A file's name appears in the message; a missing file is eoi's to report.
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    with pytest.raises(eoi.EoiError, match="bad.toml") as caught:
        eoi.plan(path)
    assert caught.value.exit_code == 2
    with pytest.raises(eoi.EoiError, match="missing.toml") as caught:
        eoi.generate(tmp_path / "missing.toml")
    assert caught.value.exit_code == 2

    # Options the binary refuses: an unknown scheme, a dict key eoi does not know.
    with pytest.raises(eoi.EoiError, match="no-such-scheme") as caught:
        eoi.generate(MLP, scheme="no-such-scheme")
    assert caught.value.exit_code == 2
    spec = tomllib.loads(CNN)
    spec["sparsity"]["densty"] = 0.5
    with pytest.raises(eoi.EoiError, match="densty") as caught:
        eoi.plan(spec)
    assert caught.value.exit_code == 2 and "density" in caught.value.message  # eoi's "did you mean"


def test_a_dict_that_has_no_toml_form_is_refused_before_running_eoi() -> None:
    with pytest.raises(TypeError, match=r"spec\['init'\]\['gain'\]: NoneType has no TOML form"):
        eoi.plan({"init": {"gain": None}})
    with pytest.raises(TypeError, match="a spec is a path, a TOML string or a dict"):
        eoi.generate(42)  # type: ignore[arg-type]


def test_dicts_are_written_as_toml_that_tomllib_reads_back() -> None:
    from eoi._toml import dumps

    spec = {
        "seed": 1,
        "sparsity": {"density": 0.125, "dense": ["input.weight", "out\"put.weight"], "distribution": "erk"},
        "init": {"gain": 1.0247, "tiny": 1e-300, "big": 1e300, "flag": True},
        "output": {"dtype": "f32"},
        "layer": [
            {"name": "hidden.{i}.weight", "shape": np.array([128, 128]), "repeat": np.int64(4), "odd key": "\x7f\\\n\t\u00e9\U0001f600"},
            {"name": "c.weight", "shape": [8, 3, 3, 3], "nested": {"deep": {"x": [1.5, -0.0]}}},
        ],
    }
    back = tomllib.loads(dumps(spec))
    spec["layer"][0]["shape"] = [128, 128]  # type: ignore[index]
    spec["layer"][0]["repeat"] = 4  # type: ignore[index]
    assert back == spec


def test_run_runs_any_command_and_raises_on_failure(tmp_path: Path, mlp_spec: Path) -> None:
    out = tmp_path / "init.safetensors"
    done = eoi.run("generate", mlp_spec, "-o", out, "--json")
    summary = json.loads(done.stdout)
    assert summary["output"] == str(out) and out.is_file()
    verify = json.loads(eoi.run("verify", out, "--json").stdout)
    assert verify["passed"] is True
    with pytest.raises(eoi.EoiError) as caught:
        eoi.run("generate", mlp_spec, "-o", out)  # exists, no --force
    assert caught.value.exit_code == 2 and str(out) in caught.value.message
