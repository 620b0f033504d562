//! The pure planner at scale: `plan()` for 100, 1,000 and 10,000 tasks against
//! a converged and a fully diverged observed state. No Docker involved.
//! Target: 10,000 tasks in ≤ 50 ms, growing linearly.
//!
//! Run: `cargo bench --bench plan`. `berth-bench` times the same inputs with a
//! simple loop for its summary table.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "../bench/src/plan_scale.rs"]
mod plan_scale;

use plan_scale::World;

fn planner(c: &mut Criterion) {
    for world in [World::Converged, World::Diverged] {
        let mut group = c.benchmark_group(format!("plan/{}", world.name()));
        for n in [100usize, 1_000, 10_000] {
            let input = plan_scale::build(n, world);
            group.throughput(Throughput::Elements(n as u64));
            if n >= 10_000 {
                group.sample_size(20);
            }
            group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
                b.iter(|| black_box(input.plan()))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, planner);
criterion_main!(benches);
