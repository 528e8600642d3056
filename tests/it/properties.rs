//! Property tests of the method itself, through the library: for random shapes, densities
//! and gains, EOI matrices are orthogonal to 1e-12 in f64, their mask is their support, the
//! density lands within one rotation of the target, and the conv rule holds.

use proptest::prelude::*;

use crate::util::gram_error;
use crate::util::lib::{
    LayerPlan, Overrides, RowBlocks, Source, generate_layer, layer_stats, parse_spec, plan,
};

/// Plans a one-layer spec and returns the layer.
fn layer(shape: &[usize], density: f64, gain: f64, centre: &str) -> LayerPlan {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let text = format!(
        "[sparsity]\ndensity = {density:?}\nbelow_minimum = \"clamp\"\n[init]\ngain = {gain:?}\nconv_center = \"{centre}\"\n[[layer]]\nname = \"w\"\nshape = [{}]\n",
        dims.join(", ")
    );
    let spec = parse_spec(Source {
        name: "prop.toml".into(),
        text,
    })
    .expect("valid spec");
    let mut plan = plan(&spec, &Overrides::default()).expect("valid plan");
    plan.layers.remove(0)
}

/// Rows of a tensor (a weight or a mask) flattened to (out, in * taps).
fn rows<T: RowBlocks>(tensor: &T) -> Vec<Vec<T::Elem>> {
    let mut flat = Vec::new();
    tensor.rows_into(0, tensor.rows(), &mut flat);
    flat.chunks(tensor.row_len())
        .map(<[T::Elem]>::to_vec)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn linear_layers_are_orthogonal_and_masked_by_their_support(
        out in 1usize..40,
        inp in 1usize..40,
        density in 0.01f64..=1.0,
        gain in 0.1f64..3.0,
        seed in any::<u64>(),
    ) {
        let l = layer(&[out, inp], density, gain, "sqrt");
        let g = generate_layer(&l, seed);
        let w = rows(&g.weight);
        let mask = rows(&g.mask);
        prop_assert!(gram_error(&w.concat(), out, inp, gain) < 1e-12);
        let mut ones = 0u64;
        for (wr, mr) in w.iter().zip(&mask) {
            for (&x, &m) in wr.iter().zip(mr) {
                // The mask is the structural support: exactly the nonzeros, save cancellations
                // to exactly 0.0, which have probability zero here.
                prop_assert_eq!(m == 1, x != 0.0);
                ones += u64::from(m);
            }
        }
        prop_assert_eq!(ones, g.stats.nnz);
        // Within one rotation of the target: a rotation changes nnz by at most 2n, and the
        // stop rule keeps the closer of the two states around the target.
        let n = out.min(inp) as f64;
        let target = l.density * (out * inp) as f64;
        prop_assert!((g.stats.nnz as f64 - target).abs() <= n, "nnz {} target {}", g.stats.nnz, target);
        // The statistics computed from the support alone agree with generation.
        prop_assert_eq!(layer_stats(&l, seed), g.stats);
    }

    #[test]
    fn conv_layers_follow_the_centre_tap_rule(
        out in 1usize..24,
        inp in 1usize..24,
        kernel in prop::collection::vec(1usize..6, 1..=3),
        density in 0.01f64..=1.0,
        same in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut shape = vec![out, inp];
        shape.extend(&kernel);
        let l = layer(&shape, density, 1.0, if same { "same" } else { "sqrt" });
        let g = generate_layer(&l, seed);
        let taps: usize = kernel.iter().product();
        let tap = kernel.iter().fold(0, |acc, &k| acc * k + (k - 1) / 2);
        let w = rows(&g.weight);
        let mask = rows(&g.mask);
        let mut centre = vec![vec![0.0; inp]; out];
        let mut centre_support = 0u64;
        let mut ones = 0u64;
        for o in 0..out {
            for i in 0..inp {
                for t in 0..taps {
                    let x = w[o][i * taps + t];
                    let m = mask[o][i * taps + t];
                    ones += u64::from(m);
                    if t == tap {
                        centre[o][i] = x;
                        if x != 0.0 {
                            prop_assert_eq!(m, 1);
                            centre_support += 1;
                        }
                    } else {
                        prop_assert_eq!(x, 0.0);
                    }
                }
            }
        }
        prop_assert!(gram_error(&centre.concat(), out, inp, 1.0) < 1e-12);
        let numel = (out * inp * taps) as u64;
        let want = ((l.density * numel as f64).ceil() as u64).min(numel).max(centre_support);
        prop_assert_eq!(ones, want);
        prop_assert_eq!(g.stats.nnz, want);
        prop_assert_eq!(g.stats.centre_nnz, Some(centre_support));
    }

    #[test]
    fn generation_is_a_pure_function_of_seed_and_layer(
        out in 1usize..30,
        inp in 1usize..30,
        density in 0.05f64..=1.0,
        seed in any::<u64>(),
    ) {
        let l = layer(&[out, inp], density, 1.0, "sqrt");
        let a = rows(&generate_layer(&l, seed).weight);
        let b = rows(&generate_layer(&l, seed).weight);
        prop_assert_eq!(a, b);
    }
}

#[test]
fn rotation_counts_are_in_line_with_the_reference() {
    // EOI.md: 100x100 at d = 0.5 takes about 245 rotations on the reference code.
    let l = layer(&[100, 100], 0.5, 1.0, "sqrt");
    let mean = (0..20)
        .map(|s| layer_stats(&l, s).rotations.unwrap_or(0) as f64)
        .sum::<f64>()
        / 20.0;
    assert!((200.0..300.0).contains(&mean), "mean rotations {mean}");
}

#[test]
fn row_support_sizes_are_uneven_as_in_the_paper() {
    // EOI.md: for 64x64 at d = 0.25 the row nnz has mean 16 and standard deviation about 10.5.
    let l = layer(&[64, 64], 0.25, 1.0, "sqrt");
    let mut sds = Vec::new();
    for seed in 0..20 {
        let g = generate_layer(&l, seed);
        let counts: Vec<f64> = rows(&g.mask)
            .iter()
            .map(|r| r.iter().map(|&m| f64::from(m)).sum())
            .collect();
        let mean = counts.iter().sum::<f64>() / 64.0;
        let var = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / 64.0;
        assert!((mean - 16.0).abs() < 0.5, "mean {mean}");
        sds.push(var.sqrt());
    }
    let sd = sds.iter().sum::<f64>() / sds.len() as f64;
    assert!(
        (7.0..14.0).contains(&sd),
        "mean row-count standard deviation {sd}"
    );
}
