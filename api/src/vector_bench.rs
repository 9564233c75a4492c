//! `stele bench vectors`: the LanceDB vector index against exact search,
//! in the same run. N clustered vectors (a Gaussian mixture, as embeddings
//! of related texts are; uniform random vectors have no neighbours worth
//! finding) are committed to a LanceDB table and held by the exact index;
//! an ANN index is built; then Q queries drawn from the same mixture (not
//! in the data) are answered by both. Reported: insert rate, index build
//! time, search latency percentiles of each, and recall@k of the ANN
//! answers against the exact ones.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use clap::Args;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stele_engine::context::vector::{ExactIndex, VectorIndex, VectorRow, normalized};

/// `stele bench vectors` options.
#[derive(Debug, Args)]
pub struct BenchVectorsArgs {
    /// Vectors in the index.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Their width.
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Queries answered by both indexes.
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
    /// Neighbours per query (recall@k).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Mixture components of the generated data.
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,
    /// ANN index: ivf_hnsw_sq or ivf_pq.
    #[arg(long, default_value = "ivf_hnsw_sq")]
    pub kind: String,
    /// IVF partitions probed per search.
    #[arg(long, default_value_t = 20)]
    pub nprobes: usize,
    /// Candidates re-ranked with full vectors, as a multiple of k (0: none).
    #[arg(long, default_value_t = 0)]
    pub refine: u32,
    /// HNSW search breadth.
    #[arg(long, default_value_t = 64)]
    pub ef: usize,
    /// Where the table goes (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// One JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Latency {
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    kind: String,
    nprobes: usize,
    refine: u32,
    ef: usize,
    insert_rows_per_s: f64,
    index_build_s: f64,
    ann: Latency,
    exact: Latency,
    /// Mean exact latency over mean ANN latency.
    speedup_vs_exact: f64,
    recall_at_k: f64,
    recall_at_k_min: f64,
    backend: &'static str,
}

/// One sample of the mixture around `center`.
fn sample(rng: &mut StdRng, center: &[f32], spread: f32) -> Vec<f32> {
    center.iter().map(|c| c + spread * gaussian(rng)).collect()
}

/// A standard normal deviate (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.r#gen::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn latency(h: &Histogram<u64>) -> Latency {
    #[allow(clippy::cast_precision_loss)]
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `stele bench vectors`.
///
/// # Errors
/// Bad arguments, or the index failed.
#[allow(clippy::cast_precision_loss)]
pub fn run(args: &BenchVectorsArgs) -> Result<ExitCode> {
    ensure!(
        args.n >= 256,
        "--n must be at least 256 (an ANN index trains on the data)"
    );
    ensure!(args.dim >= 2, "--dim must be at least 2");
    ensure!(
        args.k >= 1 && args.queries >= 1,
        "--k and --queries must be at least 1"
    );
    ensure!(args.clusters >= 1, "--clusters must be at least 1");
    let kind = stele_vectors::AnnKind::parse(&args.kind)?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("a temporary directory")?;
            tmp.path().join("vectors")
        }
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let centers: Vec<Vec<f32>> = (0..args.clusters)
        .map(|_| normalized((0..args.dim).map(|_| gaussian(&mut rng)).collect()))
        .collect();
    // Spread: neighbours within a cluster are close, clusters far apart.
    #[allow(clippy::cast_possible_truncation)]
    let spread = 0.5 / (args.dim as f32).sqrt();

    let mut ann = stele_vectors::LanceIndex::open(
        &dir,
        stele_vectors::Options {
            batch_rows: 50_000,
            ann_min_rows: 0,
            nprobes: args.nprobes,
            refine_factor: args.refine,
            ef: args.ef,
        },
    )?;
    ensure!(
        ann.is_empty(),
        "{} already holds vectors; give an empty --dir",
        dir.display()
    );
    let mut exact = ExactIndex::new();
    let mut insert_us = 0u64;
    let chunk = 50_000;
    let mut done = 0;
    while done < args.n {
        let m = chunk.min(args.n - done);
        let rows: Vec<VectorRow> = (done..done + m)
            .map(|i| {
                let center = rng.gen_range(0..centers.len());
                VectorRow {
                    key: format!("bench/{i}"),
                    owner: "bench".into(),
                    memory_type: "semantic".into(),
                    vector: sample(&mut rng, &centers[center], spread),
                }
            })
            .collect();
        exact.upsert(rows.clone())?;
        let t = Instant::now();
        ann.upsert(rows)?;
        insert_us += micros(t);
        done += m;
    }
    let t = Instant::now();
    ann.flush()?;
    insert_us += micros(t);
    let t = Instant::now();
    ann.build_ann(kind)?;
    let build_s = t.elapsed().as_secs_f64();

    let mut ann_h = Histogram::<u64>::new(3)?;
    let mut exact_h = Histogram::<u64>::new(3)?;
    let mut recalls = Vec::with_capacity(args.queries);
    for _ in 0..args.queries {
        let center = rng.gen_range(0..centers.len());
        let q = sample(&mut rng, &centers[center], spread);
        let t = Instant::now();
        let truth = exact.search(&q, args.k, &[], &mut |_| true)?;
        exact_h.record(micros(t))?;
        let t = Instant::now();
        let got = ann.search(&q, args.k, &[], &mut |_| true)?;
        ann_h.record(micros(t))?;
        let found = got
            .iter()
            .filter(|(k, _)| truth.iter().any(|(t, _)| t == k))
            .count();
        recalls.push(found as f64 / truth.len().max(1) as f64);
    }
    let recall = recalls.iter().sum::<f64>() / recalls.len() as f64;
    let report = Report {
        n: args.n,
        dim: args.dim,
        queries: args.queries,
        k: args.k,
        kind: args.kind.clone(),
        nprobes: args.nprobes,
        refine: args.refine,
        ef: args.ef,
        insert_rows_per_s: args.n as f64 / (insert_us as f64 / 1e6),
        index_build_s: build_s,
        speedup_vs_exact: exact_h.mean() / ann_h.mean(),
        ann: latency(&ann_h),
        exact: latency(&exact_h),
        recall_at_k: recall,
        recall_at_k_min: recalls.iter().copied().fold(1.0, f64::min),
        backend: ann.backend(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} vectors of {} dims, {} ({} probes, refine {}, ef {}): insert {:.0} rows/s, index built in {:.1} s",
            report.n,
            report.dim,
            report.kind,
            report.nprobes,
            report.refine,
            report.ef,
            report.insert_rows_per_s,
            report.index_build_s
        );
        println!(
            "ANN   search: mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            report.ann.mean_ms, report.ann.p50_ms, report.ann.p99_ms, report.ann.max_ms
        );
        println!(
            "exact search: mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms ({:.1}x slower)",
            report.exact.mean_ms, report.exact.p50_ms, report.exact.p99_ms, report.speedup_vs_exact
        );
        println!(
            "recall@{}: {:.3} (worst query {:.2}) over {} queries",
            report.k, report.recall_at_k, report.recall_at_k_min, report.queries
        );
    }
    Ok(ExitCode::SUCCESS)
}
