"""eoi.load and eoi.parameters on every form of eoi's safetensors output: a file, a
--masks pair (from either file), shards (directory or index), a --base directory; the
refusals name the file and say what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import eoi
from conftest import run_cli


def plain(tmp_path: Path, spec: Path, *options: str) -> dict[str, np.ndarray]:
    out = tmp_path / "plain.safetensors"
    run_cli("generate", spec, "-o", out, "-q", "--force", *options)
    return load_file(out)


def assert_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name


def test_a_file_loads_with_its_metadata(tmp_path: Path, mlp_spec: Path) -> None:
    want = plain(tmp_path, mlp_spec)
    t = eoi.load(tmp_path / "plain.safetensors")
    assert_equal(t, want)
    assert t.metadata["eoi.seed"] == "7" and len(t.layers) == 3
    assert eoi.load(str(tmp_path / "plain.safetensors")).keys() == t.keys()
    assert eoi.load(t) is t


def test_a_masks_pair_loads_whole_from_either_file(tmp_path: Path, mlp_spec: Path) -> None:
    want = plain(tmp_path, mlp_spec)
    run_cli("generate", mlp_spec, "-o", tmp_path / "w.safetensors", "--masks", tmp_path / "m.safetensors", "-q")
    assert "fc1.weight_mask" not in load_file(tmp_path / "w.safetensors")
    assert_equal(eoi.load(tmp_path / "w.safetensors"), want)
    assert_equal(eoi.load(tmp_path / "m.safetensors"), want)
    # The pair moves together, or the weights say which file is missing.
    (tmp_path / "m.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match=r"m\.safetensors: the masks file the artifact records \(eoi.masks\) is missing"):
        eoi.load(tmp_path / "w.safetensors")


def test_shards_load_whole_from_the_directory_or_the_index(tmp_path: Path, mlp_spec: Path) -> None:
    want = plain(tmp_path, mlp_spec)
    run_cli("generate", mlp_spec, "-o", tmp_path / "sharded", "--max-shard-size", "2KB", "-q")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    for artifact in [tmp_path / "sharded", tmp_path / "sharded" / "model.safetensors.index.json"]:
        t = eoi.load(artifact)
        assert_equal(t, want)
        assert [r["name"] for r in t.layers] == ["fc1.weight", "fc2.weight", "fc3.weight"]
        assert "eoi.shard" not in t.metadata


def test_a_base_directory_with_masks_loads_the_copies_and_the_masks(tmp_path: Path, mlp_spec: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    rng = np.random.default_rng(0)
    tensors = {"fc1.weight": rng.normal(size=(32, 16)), "fc2.weight": rng.normal(size=(32, 32)), "fc3.weight": rng.normal(size=(10, 32)), "norm.scale": rng.normal(size=(32,))}
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, base / "model.safetensors")
    (base / "config.json").write_text("{}")
    run_cli("generate", mlp_spec, "--base", base, "-o", tmp_path / "out", "--masks", tmp_path / "masks.safetensors", "-q")
    t = eoi.load(tmp_path / "out")
    want = plain(tmp_path, mlp_spec)
    assert np.array_equal(t["norm.scale"], tensors["norm.scale"].astype(np.float32))
    del t["norm.scale"]
    assert_equal(t, want)


def test_parameters_pair_each_weight_with_its_mask_for_both_namings(tmp_path: Path, cnn_spec: Path) -> None:
    t = eoi.generate(cnn_spec)
    found, layout = eoi.parameters(t)
    assert layout == "torch"
    assert [(p.name, p.mask is not None) for p in found] == [("conv1.weight", True), ("conv2.weight", True), ("head.weight", True)]
    pruned = eoi.generate(cnn_spec, names="torch-prune", layout="flax")
    assert "conv1.weight_orig" in pruned and pruned["conv1.weight_mask"].dtype == np.float32
    found_pruned, layout = eoi.parameters(pruned)
    assert layout == "flax"
    for p, q in zip(found, found_pruned):
        assert p.name == q.name and q.mask is not None and p.mask is not None
        assert np.array_equal(eoi.to_flax(p.value), q.value) and np.array_equal(eoi.to_flax(p.mask), q.mask)
        assert q.mask.dtype == np.bool_
    # The same from plain dicts, which have no metadata: the names tell.
    for source in (t, pruned):
        from_dict, _ = eoi.parameters(eoi.load(dict(source)))
        assert [p.name for p in from_dict] == ["conv1.weight", "conv2.weight", "head.weight"]


def test_a_layer_without_its_mask_is_refused() -> None:
    t = eoi.generate("seed = 1\n[sparsity]\ndensity = 0.5\n[[layer]]\nname = 'fc.weight'\nshape = [8, 8]\n")
    del t["fc.weight_mask"]
    with pytest.raises(ValueError, match="layer fc.weight .* without its mask fc.weight_mask"):
        eoi.parameters(t)


def test_npy_npz_and_other_files_are_refused_naming_them(tmp_path: Path, cnn_spec: Path) -> None:
    run_cli("generate", cnn_spec, "-o", tmp_path / "npy", "--format", "npy", "-q")
    run_cli("generate", cnn_spec, "-o", tmp_path / "a.npz", "--format", "npz", "-q")
    with pytest.raises(ValueError, match=r"npy: an npy directory \(--format npy\)"):
        eoi.load(tmp_path / "npy")
    with pytest.raises(ValueError, match=r"a\.npz: an npz archive"):
        eoi.load(tmp_path / "a.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ValueError, match=r"junk\.safetensors: not a safetensors file"):
        eoi.load(tmp_path / "junk.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: a directory without model.safetensors"):
        eoi.load(tmp_path / "empty")


def test_bf16_without_ml_dtypes_says_what_to_install(cnn_spec: Path) -> None:
    # ml_dtypes made unimportable in a child process (it is installed here).
    code = f"import sys; sys.modules['ml_dtypes'] = None\nimport eoi\neoi.generate({str(cnn_spec)!r}, dtype='bf16')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert "ModuleNotFoundError" in done.stderr and "is bfloat16 (BF16), which NumPy reads only with the ml_dtypes package: pip install ml_dtypes" in done.stderr
