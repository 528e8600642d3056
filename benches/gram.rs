//! Criterion benchmarks of the checks' kernels on EOI layers of `specs/transformer-1.3b.toml`
//! (f32, as stored): one pass over the matrix (`scan`), its nonzeros by column (`factor`),
//! the Gram statistics from them (`sparse gram`), and the dense Gram product for comparison
//! (the ratio of the two at d = 0.15 is what `SPARSE_COST` in src/measure/gram.rs rests on).
//! Run with `cargo bench --bench gram`; `benches/checks.sh` measures whole runs.

use criterion::{Criterion, criterion_group, criterion_main};
use eoi::layer::Dtype;
use eoi::measure::gram::{Matrix, Product, Sparse, dense_gram, gram, scan, sparse_stats};
use eoi::schemes::eoi::rotation::schedule;
use eoi::stream::Stream;
use eoi::tensor::write_all;

fn kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("gram");
    group.sample_size(10);
    // The attention and MLP layers of transformer-1.3b at the densities ERK gives them, and a
    // square layer near where the sparse product stops being the cheaper one (SPARSE_COST).
    for &(rows, cols, density) in &[
        (2048usize, 2048usize, 0.031),
        (8192, 2048, 0.019),
        (2048, 2048, 0.15),
    ] {
        let w = schedule(rows, cols, density, &mut Stream::derive(0, "bench")).matrix(1.0);
        let mut bytes = Vec::with_capacity(rows * cols * 4);
        write_all(&w, Dtype::F32, &mut bytes).unwrap();
        let matrix = Matrix::stored(&bytes, Dtype::F32, rows, cols);
        let label = format!("{rows}x{cols} d={density}");
        group.bench_function(format!("scan {label}"), |b| b.iter(|| scan(&matrix, None)));
        let counts = scan(&matrix, None);
        group.bench_function(format!("factor {label}"), |b| {
            b.iter(|| Sparse::new(&matrix, &counts))
        });
        let sparse = Sparse::new(&matrix, &counts).unwrap();
        for parallel in [false, true] {
            group.bench_function(format!("sparse gram {label} parallel={parallel}"), |b| {
                b.iter(|| sparse_stats(&sparse, parallel))
            });
        }
        if rows == cols {
            for parallel in [false, true] {
                group.bench_function(format!("dense gram {label} parallel={parallel}"), |b| {
                    b.iter(|| dense_gram(&matrix, parallel))
                });
            }
            let (stats, _, _) = gram(&matrix, &counts, Some(Product::Dense), true, false);
            assert!(stats.deviation(1.0) < 1e-5);
        }
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
