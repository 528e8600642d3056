//! `eoi spec --from`: specs written from a model's own tensors. The models are ResNet-18 and a
//! small GPT-2 style transformer with their real parameter names and shapes, written by these
//! tests as safetensors files (headers and zero data) and JSON shape lists; nothing is
//! downloaded. Each spec is generated and the output compared with the source.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::util::{
    Entry, eoi, eoi_after, read_safetensors, resnet18, safetensors_bytes, sha256, spec_from,
};

/// (name, shape) in PyTorch's state-dict order.
type ShapeList = Vec<(String, Vec<usize>)>;

/// A GPT-2 style transformer (Hugging Face names; Conv1D weights are (in, out)).
fn gpt2(blocks: usize, d: usize, vocab: usize, context: usize) -> ShapeList {
    let mut list: ShapeList = vec![
        ("wte.weight".into(), vec![vocab, d]),
        ("wpe.weight".into(), vec![context, d]),
    ];
    for i in 0..blocks {
        let p = format!("h.{i}");
        for (name, shape) in [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_attn.bias", vec![3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("attn.c_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![d, 4 * d]),
            ("mlp.c_fc.bias", vec![4 * d]),
            ("mlp.c_proj.weight", vec![4 * d, d]),
            ("mlp.c_proj.bias", vec![d]),
        ] {
            list.push((format!("{p}.{name}"), shape));
        }
    }
    list.push(("ln_f.weight".into(), vec![d]));
    list.push(("ln_f.bias".into(), vec![d]));
    list
}

/// Writes a valid safetensors file holding `list` as F32 tensors whose data is all zero (a
/// sparse file: only the header takes disk space).
fn write_safetensors(path: &Path, list: &ShapeList) {
    let mut header = serde_json::Map::new();
    let mut at = 0u64;
    for (name, shape) in list {
        let bytes = 4 * shape.iter().product::<usize>() as u64;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + bytes]}),
        );
        at += bytes;
    }
    let text = Value::Object(header).to_string();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    fs::write(path, &bytes).unwrap();
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(bytes.len() as u64 + at).unwrap();
}

fn json_object(list: &ShapeList) -> String {
    let map: serde_json::Map<String, Value> =
        list.iter().map(|(n, s)| (n.clone(), json!(s))).collect();
    Value::Object(map).to_string()
}

/// Generates `spec` into `dir/out.safetensors` and returns its tensors' shapes by name.
fn generate(dir: &Path, spec: &str, args: &[&str]) -> (PathBuf, BTreeMap<String, Vec<usize>>) {
    let spec_path = dir.join("spec.toml");
    fs::write(&spec_path, spec).unwrap();
    let out = dir.join("out.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec_path)
        .args(["-q", "--force", "-o"])
        .arg(&out)
        .args(args)
        .assert()
        .success();
    (out.clone(), shapes_of(&out))
}

fn shapes_of(path: &Path) -> BTreeMap<String, Vec<usize>> {
    read_safetensors(path)
        .tensors
        .into_iter()
        .map(|(name, tensor)| (name, tensor.shape))
        .collect()
}

/// The source's tensors of rank >= 2, by name.
fn weights(list: &ShapeList) -> BTreeMap<String, Vec<usize>> {
    list.iter().filter(|(_, s)| s.len() >= 2).cloned().collect()
}

/// The output's weights (every tensor but the masks), checking each has its mask.
fn weights_of(out: &BTreeMap<String, Vec<usize>>) -> BTreeMap<String, Vec<usize>> {
    let weights: BTreeMap<String, Vec<usize>> = out
        .iter()
        .filter(|(n, _)| !n.ends_with("_mask"))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    for (name, shape) in &weights {
        assert_eq!(out.get(&format!("{name}_mask")), Some(shape), "{name}");
    }
    assert_eq!(out.len(), 2 * weights.len());
    weights
}

#[test]
fn resnet18_round_trips_from_a_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("resnet18.safetensors");
    let list = resnet18();
    write_safetensors(&source, &list);
    let spec = spec_from(&source, &["--density", "0.1", "--distribution", "erk"]);
    // 21 weights: conv1, 16 block convolutions, 3 downsamples, fc; the rest is left out.
    assert!(spec.contains("# 21 tensors are the layers below"), "{spec}");
    assert!(spec.contains("# Left to the base, rank 1: 81\n"), "{spec}");
    assert!(spec.contains("# Left to the base, rank 0: 20\n"), "{spec}");
    assert!(spec.contains("#   \"fc.bias\" [1000]"), "{spec}");
    // layer1's two blocks have the same shapes and fold; layer2's first block differs.
    assert!(
        spec.contains("name = \"layer1.{i}.conv1.weight\"\nshape = [64, 64, 3, 3]\nrepeat = 2\n"),
        "{spec}"
    );
    let header_len = u64::from_le_bytes(fs::read(&source).unwrap()[..8].try_into().unwrap());
    let header = &fs::read(&source).unwrap()[8..8 + header_len as usize];
    let digest = sha256(header);
    assert!(
        spec.contains(&format!("sha256 of its safetensors header: {digest}")),
        "{spec}"
    );
    let (_, out) = generate(dir.path(), &spec, &[]);
    assert_eq!(weights_of(&out), weights(&list));
    // The same spec, unfolded, and again from a JSON shape list on standard input.
    let unfolded = spec_from(
        &source,
        &["--density", "0.1", "--distribution", "erk", "--no-fold"],
    );
    assert!(!unfolded.contains("repeat"), "{unfolded}");
    assert_eq!(unfolded.matches("\n[[layer]]\n").count(), 21);
    let (_, out) = generate(dir.path(), &unfolded, &[]);
    assert_eq!(weights_of(&out), weights(&list));
    let from_stdin = eoi()
        .args(["spec", "--from", "-", "--density", "0.1"])
        .write_stdin(json_object(&list))
        .assert()
        .success();
    let text = String::from_utf8(from_stdin.get_output().stdout.clone()).unwrap();
    assert!(text.starts_with("# eoi spec of \"<stdin>\""), "{text}");
    let (_, out) = generate(dir.path(), &text, &[]);
    assert_eq!(weights_of(&out), weights(&list));
}

#[test]
fn gpt2_folds_every_block_and_leaves_the_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("gpt2.safetensors");
    let list = gpt2(6, 64, 500, 128);
    write_safetensors(&source, &list);
    let spec = spec_from(&source, &["--gain", "1.0", "--seed", "7"]);
    assert_eq!(spec.matches("\n[[layer]]\n").count(), 4, "{spec}");
    assert_eq!(spec.matches("repeat = 6").count(), 4, "{spec}");
    assert!(
        spec.contains("name = \"h.{i}.mlp.c_fc.weight\"\nshape = [64, 256]\n"),
        "{spec}"
    );
    assert!(
        spec.contains("seed = 7\n") && spec.contains("gain = 1.0\n"),
        "{spec}"
    );
    // The embeddings are left by the name rules, each under its rule.
    assert!(
        spec.contains(
            "# Left to the base, embedding (name rule \"wpe\" on the module name): 1\n#   \"wpe.weight\" [128, 64]\n"
        ),
        "{spec}"
    );
    assert!(
        spec.contains(
            "# Left to the base, embedding (name rule \"wte\" on the module name): 1\n#   \"wte.weight\" [500, 64]\n"
        ),
        "{spec}"
    );
    let (_, out) = generate(dir.path(), &spec, &[]);
    assert_eq!(
        weights_of(&out),
        without(weights(&list), &["wte.weight", "wpe.weight"])
    );
    // --include adds one back; --exclude has the last word.
    let spec = spec_from(&source, &["--include", "w?e.weight", "--exclude", "wpe.*"]);
    assert!(
        spec.contains("name = \"wte.weight\"\nshape = [500, 64]\n# a layer by --include\n"),
        "{spec}"
    );
    assert!(
        spec.contains("# Left to the base, --exclude: 1\n#   \"wpe.weight\" [128, 64]\n"),
        "{spec}"
    );
    let (_, out) = generate(dir.path(), &spec, &[]);
    assert_eq!(weights_of(&out), without(weights(&list), &["wpe.weight"]));
    // An --include that adds nothing is a mistake worth saying.
    refused(
        &["--from", source.to_str().unwrap(), "--include", "h.*.bias"],
        None,
        "--include \"h.*.bias\" matches no tensor of rank 2 to 5 that would otherwise be left out",
    );
}

/// `map` without the `names`, each of which it must hold.
fn without(mut map: BTreeMap<String, Vec<usize>>, names: &[&str]) -> BTreeMap<String, Vec<usize>> {
    for name in names {
        assert!(map.remove(*name).is_some(), "{name}");
    }
    map
}

#[test]
fn flax_shapes_round_trip_to_flax_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // Flax parameter names and shapes: Conv (kh, kw, in, out), Dense (in, out).
    let list: ShapeList = vec![
        ("params.Conv_0.kernel".into(), vec![3, 3, 3, 32]),
        ("params.Conv_0.bias".into(), vec![32]),
        ("params.Conv_1.kernel".into(), vec![5, 3, 32, 64]),
        ("params.Dense_0.kernel".into(), vec![1024, 256]),
        ("params.Dense_1.kernel".into(), vec![256, 10]),
    ];
    let source = dir.path().join("flax.json");
    fs::write(&source, json_object(&list)).unwrap();
    let spec = spec_from(&source, &["--layout", "flax", "--density", "0.2"]);
    assert!(spec.contains("[output]\nlayout = \"flax\"\n"), "{spec}");
    assert!(
        spec.contains("name = \"params.Conv_1.kernel\"\nshape = [64, 32, 5, 3]\n"),
        "{spec}"
    );
    assert!(
        spec.contains("name = \"params.Dense_0.kernel\"\nshape = [256, 1024]\n"),
        "{spec}"
    );
    let (_, out) = generate(dir.path(), &spec, &[]);
    assert_eq!(weights_of(&out), weights(&list));
}

#[test]
fn groups_go_into_the_spec_and_depthwise_layers_get_at_least_one_weight_per_channel() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("list.json");
    fs::write(
        &source,
        r#"[{"name": "a.weight", "shape": [8, 4, 3, 3], "groups": 1},
            {"name": "g.weight", "shape": [8, 2, 3, 3], "groups": 4},
            {"name": "blocks.0.dw.weight", "shape": [8, 1, 3, 3], "groups": 8},
            {"name": "blocks.1.dw.weight", "shape": [8, 1, 3, 3], "groups": 8},
            {"name": "blocks.2.dw.weight", "shape": [8, 1, 3, 3]},
            {"name": "b.weight", "shape": [8, 8]}]"#,
    )
    .unwrap();
    let spec = spec_from(&source, &["--distribution", "erk", "--density", "0.5"]);
    assert!(
        spec.contains("name = \"a.weight\"\nshape = [8, 4, 3, 3]\n\n"),
        "{spec}"
    );
    assert!(
        spec.contains("name = \"g.weight\"\nshape = [8, 2, 3, 3]\ngroups = 4\n\n"),
        "{spec}"
    );
    // Only the layers with the same groups fold; under erk a depthwise table takes the
    // distribution's density like any other.
    assert!(
        spec.contains(
            "name = \"blocks.{i}.dw.weight\"\nshape = [8, 1, 3, 3]\ngroups = 8\nrepeat = 2\n\n"
        ),
        "{spec}"
    );
    assert!(
        spec.contains("name = \"blocks.2.dw.weight\"\nshape = [8, 1, 3, 3]\n\n"),
        "{spec}"
    );
    let (out, shapes) = generate(dir.path(), &spec, &[]);
    assert_eq!(shapes["g.weight"], [8, 2, 3, 3]);
    eoi().arg("verify").arg(&out).assert().code(0);
    // Under uniform, below one weight per channel (1/9 of a 3 x 3 kernel), a depthwise table
    // under EOI gets that least density of its own, and plans.
    // (b.weight, 8 x 8, is clamped to 1/8.)
    let spec = spec_from(&source, &["--density", "0.1", "--below-minimum", "clamp"]);
    assert!(
        spec.contains("repeat = 2\ndensity = 0.1111111111111111  # depthwise: EOI's least, one weight (+-gain) per channel, 1/9; [sparsity]'s 0.1 is below it\n"),
        "{spec}"
    );
    let text = dir.path().join("least.toml");
    fs::write(&text, &spec).unwrap();
    eoi().arg("plan").arg(&text).assert().success();
    // At or above it, nothing; a baseline scheme, whose minimum is one weight, needs nothing;
    // a dense glob keeps them dense itself.
    let spec = spec_from(&source, &["--density", "0.2"]);
    assert!(!spec.contains("# depthwise:"), "{spec}");
    let spec = spec_from(&source, &["--scheme", "kaiming"]);
    assert!(!spec.contains("# depthwise:"), "{spec}");
    let spec = spec_from(&source, &["--dense", "*.dw.weight", "--density", "0.5"]);
    assert!(!spec.contains("# depthwise:"), "{spec}");
    generate(dir.path(), &spec, &[]);
    // Groups that a shape cannot have are refused, naming the tensor.
    for (list, excerpt) in [
        (
            r#"[{"name": "fc.weight", "shape": [8, 4], "groups": 2}]"#,
            "tensor \"fc.weight\" has groups = 2, which its shape [8, 4] cannot have",
        ),
        (
            r#"[{"name": "c.weight", "shape": [8, 4, 3], "groups": 3}]"#,
            "tensor \"c.weight\" has groups = 3, which its shape [8, 4, 3] cannot have",
        ),
    ] {
        fs::write(&source, list).unwrap();
        eoi()
            .args(["spec", "--from"])
            .arg(&source)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(excerpt));
    }
}

#[test]
fn torchvisions_efficientnet_b0_gives_the_bundled_spec_layers() {
    // tests/fixtures/efficientnet-b0-shapes.json is examples/shapes_from_torch.py's output for
    // torchvision 0.29.2's efficientnet_b0 (run by hand; torch is not installed in CI).
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_from(
        Path::new("tests/fixtures/efficientnet-b0-shapes.json"),
        &["--distribution", "erk", "--no-fold"],
    );
    let layers = |text: &str| -> Vec<(String, Value, i64)> {
        let table: toml::Table = toml::from_str(text).unwrap();
        table["layer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    json!(
                        l["shape"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|d| d.as_integer().unwrap())
                            .collect::<Vec<_>>()
                    ),
                    l.get("groups").map_or(1, |g| g.as_integer().unwrap()),
                )
            })
            .collect()
    };
    let bundled = fs::read_to_string("specs/efficientnet-b0.toml").unwrap();
    assert_eq!(layers(&spec), layers(&bundled));
    // Under erk the depthwise layers take ERK's densities, as the bundled spec does.
    assert_eq!(spec.matches("# depthwise:").count(), 0);
    let (out, _) = generate(dir.path(), &spec, &[]);
    eoi().arg("verify").arg(&out).assert().code(0);
}

#[test]
fn a_sharded_checkpoint_is_read_through_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let list = gpt2(2, 32, 100, 16);
    let (first, second) = list.split_at(list.len() / 2);
    let ckpt = dir.path().join("ckpt");
    fs::create_dir(&ckpt).unwrap();
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        write_safetensors(&ckpt.join(file), &part.to_vec());
        for (name, _) in part {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map}).to_string();
    fs::write(ckpt.join("model.safetensors.index.json"), &index).unwrap();
    let by_file = spec_from(&ckpt.join("model.safetensors.index.json"), &[]);
    let by_dir = spec_from(&ckpt, &[]);
    assert_eq!(
        by_file.lines().skip(1).collect::<Vec<_>>(),
        by_dir.lines().skip(1).collect::<Vec<_>>()
    );
    assert!(
        by_file.contains(&format!(
            "sha256 of its index file: {}",
            sha256(index.as_bytes())
        )),
        "{by_file}"
    );
    let (_, out) = generate(dir.path(), &by_file, &[]);
    assert_eq!(
        weights_of(&out),
        without(weights(&list), &["wte.weight", "wpe.weight"])
    );
}

#[test]
#[cfg(unix)]
fn a_checkpoint_of_256_gib_is_specced_from_its_header_alone() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.safetensors");
    // 16 layers of 65536 x 65536 in F32: 256 GiB of data, all of it a hole in a sparse file.
    let mut list: ShapeList = (0..16)
        .map(|i| (format!("blocks.{i}.weight"), vec![65536, 65536]))
        .collect();
    list.push(("blocks.norm".into(), vec![65536]));
    write_safetensors(&source, &list);
    assert!(fs::metadata(&source).unwrap().len() > 256 << 30);
    // Reading 256 GiB, even of holes, takes far more than 5 seconds of CPU time; the header
    // takes milliseconds. Past the limit the kernel stops the process and the test fails.
    let out = eoi_after("ulimit -t 5")
        .args(["spec", "--from"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let spec = String::from_utf8(out.stdout).unwrap();
    assert!(
        spec.contains("name = \"blocks.{i}.weight\"\nshape = [65536, 65536]\nrepeat = 16\n"),
        "{spec}"
    );
}

/// Runs `eoi spec --from ARGS` expecting exit 2 with `message` on standard error, no stdout
/// and no output file.
fn refused(args: &[&str], stdin: Option<&str>, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spec.toml");
    let mut cmd = eoi();
    cmd.arg("spec").args(args).arg("-o").arg(&out);
    if let Some(input) = stdin {
        cmd.write_stdin(input);
    }
    cmd.assert()
        .code(2)
        .stdout("")
        .stderr(predicates::str::contains(message));
    assert!(!out.exists());
}

#[test]
fn bad_sources_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    fs::write(&text, "hello, not a model\n").unwrap();
    let text = text.to_str().unwrap();
    refused(
        &["--from", text],
        None,
        "(not a safetensors file, or a forged header)",
    );
    let json = dir.path().join("list.json");
    fs::write(&json, "{\"a\": [3, 3],}").unwrap();
    refused(
        &["--from", json.to_str().unwrap()],
        None,
        "is not a safetensors file, a sharded index or a JSON shape list: trailing comma",
    );
    let garbage = dir.path().join("garbage.safetensors");
    fs::write(&garbage, [0xffu8, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3]).unwrap();
    refused(
        &["--from", garbage.to_str().unwrap()],
        None,
        "exceeds the limit",
    );
    // Duplicate names in a safetensors header are refused by the reader, and an index must
    // point at shards that exist.
    let twice = dir.path().join("twice.safetensors");
    let header = r#"{"w":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4]},"w":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([1, 2, 3, 4]);
    fs::write(&twice, bytes).unwrap();
    refused(
        &["--from", twice.to_str().unwrap()],
        None,
        "\"w\" appears twice",
    );
    let index = dir.path().join("model.safetensors.index.json");
    fs::write(&index, r#"{"weight_map": {"x": "missing.safetensors"}}"#).unwrap();
    refused(&["--from", index.to_str().unwrap()], None, "cannot read");
    refused(
        &["--from", "-"],
        Some("[1, 2, 3]"),
        "entry 0 is not an object",
    );
    refused(
        &["--from", "-"],
        Some(r#"{"a.weight": [3, 0]}"#),
        "tensor \"a.weight\" has shape [3, 0], with a zero dimension",
    );
    refused(
        &["--from", "-"],
        Some(r#"{"a": [3, 3], "a": [3, 3]}"#),
        "tensor \"a\" is listed twice",
    );
    refused(
        &["--from", "-"],
        Some(r#"{"a": [3], "b": [3, 3]}"#),
        "has no weight of a linear or convolution module to initialize (2 tensors left out, 1 rank 1, 1 not a .weight, kernel or in_proj_weight)",
    );
    refused(
        &["--from", "-", "--density", "0"],
        Some(r#"{"a": [3, 3]}"#),
        "--density 0: a density must be in (0, 1]",
    );
    refused(
        &["--from", "-", "--gain", "rleu"],
        Some(r#"{"a": [3, 3]}"#),
        "--gain rleu",
    );
    refused(
        &["--from", "missing.safetensors"],
        None,
        "cannot read 'missing.safetensors'",
    );
    // An existing output is not replaced without --force.
    let existing = dir.path().join("spec.toml");
    fs::write(&existing, "keep me").unwrap();
    eoi()
        .args(["spec", "--from", "-", "-o"])
        .arg(&existing)
        .write_stdin(r#"{"a": [3, 3]}"#)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("already exists; pass --force"));
    assert_eq!(fs::read_to_string(&existing).unwrap(), "keep me");
    eoi()
        .args(["spec", "--from", "-", "--force", "-o"])
        .arg(&existing)
        .write_stdin(r#"{"a.weight": [3, 3]}"#)
        .assert()
        .success();
    assert!(
        fs::read_to_string(&existing)
            .unwrap()
            .contains("name = \"a.weight\"")
    );
}

#[test]
fn output_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("resnet18.safetensors");
    write_safetensors(&source, &resnet18());
    let a = spec_from(
        &source,
        &["--density", "0.3", "--dense", "fc.*", "--scheme", "eoi"],
    );
    let b = spec_from(
        &source,
        &["--density", "0.3", "--dense", "fc.*", "--scheme", "eoi"],
    );
    assert_eq!(a, b);
    assert!(
        a.contains("dense = [\"fc.*\"]\n") && a.contains("scheme = \"eoi\"\n"),
        "{a}"
    );
}

/// Writes a safetensors file of `(name, dtype, shape, data)`.
fn write_tensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| Entry::new(name, dtype, shape, data.clone()))
        .collect();
    fs::write(path, safetensors_bytes(&entries, None, false)).unwrap();
}

#[test]
fn densities_come_from_the_masks_of_a_pruning_method() {
    let dir = tempfile::tempdir().unwrap();
    let shapes = dir.path().join("shapes.json");
    fs::write(
        &shapes,
        r#"{"a.weight": [4, 6], "b.weight": [8, 8], "c.weight": [5, 5], "h.0.weight": [4, 4], "h.1.weight": [4, 4], "d.weight": [6, 6]}"#,
    )
    .unwrap();
    // a: a bool mask with 6 of 24 set; b: an f32 tensor named as the weight, 16 of 64
    // nonzero (a -0.0 is zero); h.0 and h.1: u8 masks with 8 of 16 set; c: none; d: dense.
    let mut a = vec![0u8; 24];
    for k in [0, 5, 7, 11, 20, 23] {
        a[k] = 1;
    }
    let b: Vec<u8> = (0..64)
        .flat_map(|k| {
            let v: f32 = if k % 4 == 0 {
                0.5
            } else if k == 1 {
                -0.0
            } else {
                0.0
            };
            v.to_le_bytes()
        })
        .collect();
    let half: Vec<u8> = (0..16).map(|k| (k % 2) as u8 * 3).collect();
    let masks = dir.path().join("masks.safetensors");
    write_tensors(
        &masks,
        &[
            ("a.weight_mask", "BOOL", vec![4, 6], a),
            ("b.weight", "F32", vec![8, 8], b),
            ("h.0.weight_mask", "U8", vec![4, 4], half.clone()),
            ("h.1.weight_mask", "U8", vec![4, 4], half),
            ("d.weight_mask", "U8", vec![6, 6], vec![1; 36]),
        ],
    );
    let spec = spec_from(
        &shapes,
        &[
            "--densities-from",
            masks.to_str().unwrap(),
            "--dense",
            "d.*",
            "--density",
            "0.3",
        ],
    );
    assert!(spec.contains("name = \"a.weight\"\nshape = [4, 6]\ndensity = 0.25  # 6 of 24 nonzero in mask \"a.weight_mask\"\n"), "{spec}");
    assert!(spec.contains("name = \"b.weight\"\nshape = [8, 8]\ndensity = 0.25  # 16 of 64 nonzero in mask \"b.weight\"\n"), "{spec}");
    assert!(
        spec.contains("name = \"h.{i}.weight\"\nshape = [4, 4]\nrepeat = 2\ndensity = 0.5"),
        "{spec}"
    );
    assert!(
        spec.contains("name = \"c.weight\"\nshape = [5, 5]\n# no mask used"),
        "{spec}"
    );
    assert!(
        spec.contains("name = \"d.weight\"\nshape = [6, 6]\n# no mask used"),
        "{spec}"
    );
    assert!(spec.contains("# 4 layers have a mask"), "{spec}");
    let path = dir.path().join("spec.toml");
    fs::write(&path, &spec).unwrap();
    let plan = eoi()
        .arg("plan")
        .arg(&path)
        .arg("--json")
        .assert()
        .success();
    let plan: Value = serde_json::from_slice(&plan.get_output().stdout).unwrap();
    let density = |name: &str| {
        let layer = plan["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap();
        (
            layer["density"].as_f64().unwrap(),
            layer["origin"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(density("a.weight"), (0.25, "fixed".into()));
    assert_eq!(density("h.1.weight"), (0.5, "fixed".into()));
    assert_eq!(density("d.weight"), (1.0, "dense".into()));
    assert_eq!(density("c.weight"), (0.3, "distributed".into()));

    // A mask of the wrong shape, and an empty one, are refused naming both.
    write_tensors(
        &masks,
        &[("a.weight_mask", "BOOL", vec![6, 4], vec![1; 24])],
    );
    refused(
        &[
            "--from",
            shapes.to_str().unwrap(),
            "--densities-from",
            masks.to_str().unwrap(),
        ],
        None,
        "mask \"a.weight_mask\" has shape [6, 4], but layer \"a.weight\" has shape [4, 6]",
    );
    write_tensors(
        &masks,
        &[("a.weight_mask", "BOOL", vec![4, 6], vec![0; 24])],
    );
    refused(
        &[
            "--from",
            shapes.to_str().unwrap(),
            "--densities-from",
            masks.to_str().unwrap(),
        ],
        None,
        "mask \"a.weight_mask\" of layer \"a.weight\" has no nonzero element",
    );
}

/// The twelve model families of tests/fixtures/models (made by its make.py with the real
/// libraries), with the layout of their shapes.
const FAMILIES: &[(&str, &str)] = &[
    ("resnet50", "torch"),
    ("mobilenet_v2", "torch"),
    ("convnext_tiny", "torch"),
    ("efficientnet_b0", "torch"),
    ("resnext50_32x4d", "torch"),
    ("vit_b_16", "torch"),
    ("bert", "torch"),
    ("llama", "torch"),
    ("t5", "torch"),
    ("vit", "torch"),
    ("gpt2", "torch"),
    ("flax_cnn", "flax"),
];

fn fixture(name: &str) -> PathBuf {
    Path::new("tests/fixtures/models").join(name)
}

/// Writes a valid safetensors file with the header text `header` (as a model's own save
/// wrote it, padding included) and all-zero data, as a sparse file.
fn write_from_header(path: &Path, header: &str) {
    let parsed: serde_json::Map<String, Value> = serde_json::from_str(header).unwrap();
    let end = parsed
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["data_offsets"][1].as_u64().unwrap())
        .max()
        .unwrap_or(0);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    fs::write(path, &bytes).unwrap();
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(bytes.len() as u64 + end).unwrap();
}

/// The layers of a spec: (name, shape) of every [[layer]], `repeat` expanded.
fn spec_layers(text: &str) -> BTreeMap<String, Vec<usize>> {
    let table: toml::Table = toml::from_str(text).unwrap();
    let mut layers = BTreeMap::new();
    for layer in table["layer"].as_array().unwrap() {
        let name = layer["name"].as_str().unwrap();
        let shape: Vec<usize> = layer["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_integer().unwrap() as usize)
            .collect();
        let repeat = layer.get("repeat").map_or(1, |r| r.as_integer().unwrap());
        for i in 0..repeat {
            let expanded = if layer.get("repeat").is_some() {
                name.replace("{i}", &i.to_string())
            } else {
                name.to_string()
            };
            layers.insert(expanded, shape.clone());
        }
    }
    layers
}

/// The names a shape list's kinds make layers of: linear and conv tensors not tied to
/// another, with their shapes in PyTorch order.
fn kind_layers(list: &[Value], layout: &str) -> BTreeMap<String, Vec<usize>> {
    list.iter()
        .filter(|e| {
            matches!(e["kind"].as_str(), Some("linear" | "conv")) && e.get("tied_to").is_none()
        })
        .map(|e| {
            let mut shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            if layout == "flax" {
                let n = shape.len();
                let mut torch = vec![shape[n - 1], shape[n - 2]];
                torch.extend_from_slice(&shape[..n - 2]);
                shape = torch;
            }
            (e["name"].as_str().unwrap().to_string(), shape)
        })
        .collect()
}

/// Whether a spec names `name` in a comment line of the tensors left to the base (with a
/// tensor tied to it) or in a layer's `tied`.
fn listed(spec: &str, name: &str) -> bool {
    let quoted = format!("\"{name}\"");
    spec.lines().any(|line| {
        (line.starts_with("#   ") || line.starts_with("tied = ")) && line.contains(&quoted)
    })
}

/// Plans `spec`, which must succeed.
fn plans(dir: &Path, spec: &str, what: &str) {
    let path = dir.join(format!("{what}.toml"));
    fs::write(&path, spec).unwrap();
    let out = eoi().arg("plan").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}\n{spec}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn twelve_real_model_families_give_only_their_linear_and_conv_weights() {
    for &(family, layout) in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let list_path = fixture(&format!("{family}.shapes.json"));
        let list: Vec<Value> = serde_json::from_slice(&fs::read(&list_path).unwrap()).unwrap();
        let header = fs::read_to_string(fixture(&format!("{family}.header.json"))).unwrap();
        let checkpoint = dir.path().join("model.safetensors");
        write_from_header(&checkpoint, &header);
        let base_names: BTreeMap<String, Value> = serde_json::from_str(&header).unwrap();
        let want = kind_layers(&list, layout);
        assert!(!want.is_empty(), "{family}");

        // (a) From the shape list: exactly the linear and conv tensors, and every other
        // tensor named in the closing comment.
        let spec = spec_from(&list_path, &["--layout", layout, "--no-fold"]);
        assert_eq!(spec_layers(&spec), want, "{family}: {spec}");
        for entry in &list {
            let name = entry["name"].as_str().unwrap();
            if !want.contains_key(name) {
                assert!(
                    listed(&spec, name),
                    "{family}: {name} is not listed: {spec}"
                );
            }
        }

        // (b) From the checkpoint header alone: the name rules pick the same tensors.
        let from_header = spec_from(&checkpoint, &["--layout", layout, "--no-fold"]);
        let got = spec_layers(&from_header);
        if family == "vit" {
            // transformers 5 renames ViT's modules in memory (layers.N.attention.q_proj) and
            // writes the original names (encoder.layer.N.attention.attention.query): the same
            // layers under other names, so the shapes agree and the names do not.
            assert!(got.contains_key("encoder.layer.0.attention.attention.query.weight"));
            assert!(want.contains_key("layers.0.attention.q_proj.weight"));
            let shapes = |m: &BTreeMap<String, Vec<usize>>| {
                let mut v: Vec<Vec<usize>> = m.values().cloned().collect();
                v.sort();
                v
            };
            assert_eq!(shapes(&got), shapes(&want), "{family}");
        } else {
            assert_eq!(got, want, "{family}: {from_header}");
        }
        for name in base_names.keys().filter(|n| *n != "__metadata__") {
            assert!(
                got.contains_key(name) || from_header.contains(&format!("#   \"{name}\" ")),
                "{family}: {name} is not listed: {from_header}"
            );
        }

        // (c) Both plan at uniform 0.2 and at ERK 0.1.
        for (what, args) in [
            ("uniform", vec!["--density", "0.2"]),
            ("erk", vec!["--density", "0.1", "--distribution", "erk"]),
        ] {
            let mut args = args.clone();
            args.extend(["--layout", layout]);
            plans(
                dir.path(),
                &spec_from(&list_path, &args),
                &format!("{family}-list-{what}"),
            );
            plans(
                dir.path(),
                &spec_from(&checkpoint, &args),
                &format!("{family}-header-{what}"),
            );
        }

        // (d) generate --base completes the checkpoint: every tensor that is not a layer is
        // byte-identical to the base's, and every layer has its mask.
        let spec = spec_from(&checkpoint, &["--layout", layout, "--density", "0.1"]);
        let spec_path = dir.path().join("spec.toml");
        fs::write(&spec_path, &spec).unwrap();
        let out = dir.path().join("out.safetensors");
        eoi()
            .arg("generate")
            .arg(&spec_path)
            .args(["-q", "--base"])
            .arg(&checkpoint)
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        let base_bytes = fs::read(&checkpoint).unwrap();
        let out_bytes = fs::read(&out).unwrap();
        let base = safetensors::SafeTensors::deserialize(&base_bytes).unwrap();
        let written = safetensors::SafeTensors::deserialize(&out_bytes).unwrap();
        for (name, view) in base.tensors() {
            let copy = written.tensor(&name).unwrap();
            assert_eq!(copy.shape(), view.shape(), "{family}: {name}");
            assert_eq!(copy.dtype(), view.dtype(), "{family}: {name}");
            if got.contains_key(&name) {
                assert!(
                    written.tensor(&format!("{name}_mask")).is_ok(),
                    "{family}: {name}"
                );
            } else {
                assert!(copy.data() == view.data(), "{family}: {name} changed");
            }
        }
        assert_eq!(written.len(), base.len() + got.len(), "{family}");
    }
}

#[test]
fn tied_gpt2_has_one_layer_per_storage_and_base_copies_get_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let list = fixture("gpt2.shapes.json");
    // By default the storage (the embedding) is left, and its tied head with it.
    let spec = spec_from(&list, &[]);
    assert!(
        spec.contains("#   \"transformer.wte.weight\" [50257, 768] (Embedding); \"lm_head.weight\" tied to it, so left too\n"),
        "{spec}"
    );
    assert!(!spec.contains("name = \"lm_head.weight\""), "{spec}");
    // With --include the embedding is the layer, and the head is tied to it.
    let spec = spec_from(&list, &["--include", "transformer.wte.weight"]);
    assert!(
        spec.contains(
            "name = \"transformer.wte.weight\"\nshape = [50257, 768]\ntied = [\"lm_head.weight\"]"
        ),
        "{spec}"
    );
    let spec_path = dir.path().join("spec.toml");
    fs::write(&spec_path, &spec).unwrap();
    let plan = eoi().arg("plan").arg(&spec_path).assert().success();
    let text = String::from_utf8(plan.get_output().stdout.clone()).unwrap();
    assert!(
        text.contains("tied to transformer.wte.weight: lm_head.weight (same storage"),
        "{text}"
    );
    let plan = eoi()
        .arg("plan")
        .arg(&spec_path)
        .arg("--json")
        .assert()
        .success();
    let plan: Value = serde_json::from_slice(&plan.get_output().stdout).unwrap();
    let wte = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "transformer.wte.weight")
        .unwrap();
    assert_eq!(wte["tied"], json!(["lm_head.weight"]));
    assert!(
        plan["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["name"] != "transformer.wte.weight")
            .all(|l| l.get("tied").is_none())
    );

    // Without --base only the storage is written, as transformers saves it; the record
    // names the tied parameter.
    let plain = dir.path().join("plain.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec_path)
        .args(["-q", "-o"])
        .arg(&plain)
        .assert()
        .success();
    let bytes = fs::read(&plain).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(file.tensor("lm_head.weight").is_err());
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let records: Value =
        serde_json::from_str(&metadata.metadata().as_ref().unwrap()["eoi.layers"]).unwrap();
    assert_eq!(records[0]["tied"], json!(["lm_head.weight"]));

    // A base that holds the tied name as a tensor of its own (a state_dict saved without
    // removing duplicates) gets the weight's bytes there, with no mask of its own.
    let names: Vec<Value> = serde_json::from_slice(&fs::read(&list).unwrap()).unwrap();
    let shapes: ShapeList = names
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect();
    let base = dir.path().join("base.safetensors");
    write_safetensors(&base, &shapes);
    let out = dir.path().join("out.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec_path)
        .args(["-q", "--base"])
        .arg(&base)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let bytes = fs::read(&out).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let weight = file.tensor("transformer.wte.weight").unwrap();
    let tied = file.tensor("lm_head.weight").unwrap();
    assert!(weight.data().iter().any(|&b| b != 0));
    assert!(tied.data() == weight.data());
    assert!(file.tensor("lm_head.weight_mask").is_err());
    assert!(file.tensor("transformer.wte.weight_mask").is_ok());
    // Every tensor of the base, and a mask for each of the 9 layers (8 blocks' and wte).
    assert_eq!(file.len(), shapes.len() + 9);
    // verify checks the tied copy: it passes as written, and fails when it differs.
    let at = tied.data().as_ptr() as usize - bytes.as_ptr() as usize;
    eoi()
        .arg("verify")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicates::str::contains("9 layers pass every check"));
    let mut tampered = bytes.clone();
    tampered[at + 5] ^= 0x40;
    let broken = dir.path().join("broken.safetensors");
    fs::write(&broken, &tampered).unwrap();
    eoi()
        .arg("verify")
        .arg(&broken)
        .assert()
        .code(1)
        .stdout(predicates::str::contains(
            "the tied tensor \"lm_head.weight\" does not hold the weight's bytes",
        ));

    // A tied name the base holds in another shape is refused, naming it.
    let mut wrong = shapes.clone();
    for (name, shape) in wrong.iter_mut() {
        if name == "lm_head.weight" {
            *shape = vec![768, 50257];
        }
    }
    write_safetensors(&base, &wrong);
    eoi()
        .arg("generate")
        .arg(&spec_path)
        .args(["-q", "--force", "--base"])
        .arg(&base)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "tensor \"lm_head.weight\" is tied to layer \"transformer.wte.weight\" in the spec, but the base",
        ));
    // --include of the tied name itself says to include the storage.
    refused(
        &[
            "--from",
            list.to_str().unwrap(),
            "--include",
            "lm_head.weight",
        ],
        None,
        "matches \"lm_head.weight\", which is tied to \"transformer.wte.weight\"",
    );
}

#[test]
fn a_save_pretrained_directory_is_a_source() {
    // An unsharded save_pretrained directory: model.safetensors (and config.json) inside.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama");
    fs::create_dir(&model).unwrap();
    fs::write(model.join("config.json"), "{}").unwrap();
    let header = fs::read_to_string(fixture("llama.header.json")).unwrap();
    write_from_header(&model.join("model.safetensors"), &header);
    let by_dir = spec_from(&model, &[]);
    let by_file = spec_from(&model.join("model.safetensors"), &[]);
    assert_eq!(
        by_dir.lines().skip(1).collect::<Vec<_>>(),
        by_file.lines().skip(1).collect::<Vec<_>>()
    );
    assert_eq!(spec_layers(&by_dir).len(), 15, "{by_dir}");
}

#[test]
fn the_layers_dtype_goes_into_output_and_generate_base_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    // A real bf16 header: the Llama fixture, saved by save_pretrained after .to(bfloat16).
    let header = fs::read_to_string(fixture("llama.header.json")).unwrap();
    assert!(header.contains("\"BF16\""));
    let base = dir.path().join("llama.safetensors");
    write_from_header(&base, &header);
    let spec = spec_from(&base, &["--density", "0.2"]);
    assert!(
        spec.contains("\n[output]\ndtype = \"bf16\"  # the layers' dtype in the source"),
        "{spec}"
    );
    let spec_path = dir.path().join("spec.toml");
    fs::write(&spec_path, &spec).unwrap();
    let out = dir.path().join("out.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec_path)
        .args(["-q", "--base"])
        .arg(&base)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let bytes = fs::read(&out).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        file.tensor("lm_head.weight").unwrap().dtype(),
        safetensors::Dtype::BF16
    );
    // Mixed dtypes: the majority is written, and the others are named.
    let source = dir.path().join("mixed.safetensors");
    write_tensors(
        &source,
        &[
            ("a.weight", "F16", vec![2, 2], vec![0; 8]),
            ("b.weight", "F16", vec![2, 2], vec![0; 8]),
            ("c.weight", "F32", vec![2, 2], vec![0; 16]),
            ("c.bias", "F64", vec![2], vec![0; 16]),
        ],
    );
    let spec = spec_from(&source, &[]);
    assert!(
        spec.contains("[output]\ndtype = \"f16\"  # the layers' dtype in the source, so `generate --base` keeps it\n# 1 layers are stored in another dtype than f16 (`generate --base` refuses them\n# until --dtype or the base agrees):\n#   \"c.weight\" f32\n"),
        "{spec}"
    );
    // An f32 checkpoint's spec has no [output] dtype, as before.
    let spec = spec_from(&fixture("gpt2.shapes.json"), &[]);
    assert!(!spec.contains("dtype"), "{spec}");
}

#[test]
fn depthwise_convolutions_from_a_header_are_assumed_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("mobilenet_v2.safetensors");
    write_from_header(
        &checkpoint,
        &fs::read_to_string(fixture("mobilenet_v2.header.json")).unwrap(),
    );
    let out = eoi()
        .args(["spec", "--from"])
        .arg(&checkpoint)
        .assert()
        .success();
    let spec = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("warning: 17 convolution weights of shape [C, 1, k...] are assumed depthwise (groups = C)"),
        "{stderr}"
    );
    assert!(
        spec.contains("# 17 convolutions of shape [C, 1, k...] are assumed depthwise (groups = C)"),
        "{spec}"
    );
    assert!(
        spec.contains("name = \"features.1.conv.0.0.weight\"\nshape = [32, 1, 3, 3]\ngroups = 32  # assumed depthwise: the source does not record groups. If this is a plain\n# convolution with one input channel, delete this line (and a depthwise `density` below).\ndensity = 0.1111111111111111  # depthwise: EOI's least"),
        "{spec}"
    );
    // The shape list's groups agree with every assumption.
    let list: Vec<Value> =
        serde_json::from_slice(&fs::read(fixture("mobilenet_v2.shapes.json")).unwrap()).unwrap();
    let unfolded = spec_from(&checkpoint, &["--no-fold"]);
    let table: toml::Table = toml::from_str(&unfolded).unwrap();
    let mut assumed = 0;
    for layer in table["layer"].as_array().unwrap() {
        let name = layer["name"].as_str().unwrap();
        let groups = layer.get("groups").map_or(1, |g| g.as_integer().unwrap());
        let entry = list.iter().find(|e| e["name"] == name).unwrap();
        assert_eq!(entry["groups"].as_i64().unwrap_or(1), groups, "{name}");
        assumed += usize::from(groups > 1);
    }
    assert_eq!(assumed, 17);
    // A [C, 1, k...] first layer on one-channel input (the Flax CNN's, for 28 x 28 x 1
    // images) is fed by no other layer: an ordinary convolution, not assumed depthwise.
    let cnn = dir.path().join("flax_cnn.safetensors");
    write_from_header(
        &cnn,
        &fs::read_to_string(fixture("flax_cnn.header.json")).unwrap(),
    );
    let out = eoi()
        .args(["spec", "--layout", "flax", "--from"])
        .arg(&cnn)
        .assert()
        .success();
    let spec = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        spec.contains("name = \"Conv_0.kernel\"\nshape = [32, 1, 3, 3]\n\n"),
        "{spec}"
    );
    assert!(out.get_output().stderr.is_empty());
    // From the shape list, which records groups, nothing is assumed.
    let out = eoi()
        .args(["spec", "--from"])
        .arg(fixture("mobilenet_v2.shapes.json"))
        .assert()
        .success();
    assert!(out.get_output().stderr.is_empty());
    assert!(!String::from_utf8_lossy(&out.get_output().stdout).contains("assumed"));
}

#[test]
fn below_minimum_comes_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    // 1/512 is below EOI's minimum 1/256 for a 256 x 256 layer (and the 4 x 256's 1/256).
    let source = dir.path().join("list.json");
    fs::write(&source, r#"{"a.weight": [256, 256], "b.weight": [4, 256]}"#).unwrap();
    let spec = spec_from(&source, &["--density", "0.001953125"]);
    assert!(!spec.contains("below_minimum"), "{spec}");
    let path = dir.path().join("spec.toml");
    fs::write(&path, &spec).unwrap();
    eoi()
        .arg("plan")
        .arg(&path)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("or pass --below-minimum clamp"));
    let plan = eoi()
        .arg("plan")
        .arg(&path)
        .args(["--below-minimum", "clamp", "--json"])
        .assert()
        .success();
    let plan: Value = serde_json::from_slice(&plan.get_output().stdout).unwrap();
    assert_eq!(plan["layers"][0]["origin"], "clamped");
    assert_eq!(plan["layers"][0]["density"], 1.0 / 256.0);
    // generate takes it too, and records it, since the spec text does not say it.
    let out = dir.path().join("out.safetensors");
    eoi()
        .arg("generate")
        .arg(&path)
        .args(["-q", "--below-minimum", "clamp", "-o"])
        .arg(&out)
        .assert()
        .success();
    let bytes = fs::read(&out).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        metadata.metadata().as_ref().unwrap()["eoi.below_minimum"],
        "clamp"
    );
    // verify --regenerate plans the embedded spec with the recorded rule, in every container.
    let npy = dir.path().join("out-npy");
    eoi()
        .arg("generate")
        .arg(&path)
        .args(["-q", "--below-minimum", "clamp", "--format", "npy", "-o"])
        .arg(&npy)
        .assert()
        .success();
    for artifact in [&out, &npy] {
        eoi()
            .arg("verify")
            .arg(artifact)
            .arg("--regenerate")
            .assert()
            .success();
    }
    // spec --from writes it into [sparsity]; the command line still overrides it.
    let spec = spec_from(
        &source,
        &["--density", "0.001953125", "--below-minimum", "clamp"],
    );
    assert!(
        spec.contains("distribution = \"uniform\"\nbelow_minimum = \"clamp\"\n"),
        "{spec}"
    );
    fs::write(&path, &spec).unwrap();
    eoi().arg("plan").arg(&path).assert().success();
    eoi()
        .arg("plan")
        .arg(&path)
        .args(["--below-minimum", "error"])
        .assert()
        .code(2);
    eoi()
        .args(["spec", "--from"])
        .arg(&source)
        .args(["--below-minimum", "dense-ish"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("[possible values: error, clamp]"));
}
