//! Criterion benchmarks of EOI's kernels: the stop rule on the support alone (`schedule`),
//! applying the rotations to the values (`matrix`), and encoding a layer to bytes. Run with
//! `cargo bench --bench rotation`; `benches/ratios.sh` measures whole runs against the
//! reference and against `dd`.

use criterion::{Criterion, criterion_group, criterion_main};
use eoi::layer::Dtype;
use eoi::schemes::eoi::rotation::schedule;
use eoi::stream::Stream;
use eoi::tensor::write_all;

fn kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("eoi");
    group.sample_size(10);
    for &(n, density) in &[(128usize, 0.125), (1024, 0.1), (2048, 0.1), (4096, 0.5)] {
        group.bench_function(format!("schedule {n}x{n} d={density}"), |b| {
            b.iter(|| schedule(n, n, density, &mut Stream::derive(0, "bench")))
        });
        let s = schedule(n, n, density, &mut Stream::derive(0, "bench"));
        group.bench_function(format!("matrix {n}x{n} d={density}"), |b| {
            b.iter(|| s.matrix(1.0))
        });
        let w = s.matrix(1.0);
        group.bench_function(format!("encode f32 {n}x{n}"), |b| {
            let mut out = Vec::with_capacity(n * n * 4);
            b.iter(|| {
                out.clear();
                write_all(&w, Dtype::F32, &mut out).unwrap();
            })
        });
        let mask = s.mask();
        group.bench_function(format!("encode mask {n}x{n}"), |b| {
            let mut out = Vec::with_capacity(n * n);
            b.iter(|| {
                out.clear();
                write_all(&mask, Dtype::Bool, &mut out).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
