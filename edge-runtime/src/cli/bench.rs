//! `kestrel-edge bench`: measures a bundle (and onnxruntime on the same model, if asked) and
//! prints the report.

pub use crate::bench::BenchArgs;
use crate::bench::{KernelsResult, measure};
use crate::profile::{OpKind, Profile};

/// `kestrel-edge bench`: measure and print.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let r = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("bundle     {} ({})", args.bundle.display(), r.precision);
    println!("threads    {}", r.threads);
    println!(
        "load       {:.0} ms ({} files); first result {:.0} ms after the start",
        r.load_ms, r.format, r.first_result_ms
    );
    for f in &r.formats {
        let each: Vec<String> = f.loads_ms.iter().map(|ms| format!("{ms:.0}")).collect();
        println!(
            "  from {}: load {:.0} ms median ({} ms)",
            f.format,
            f.load_ms,
            each.join(", ")
        );
    }
    for k in &r.kernels {
        println!(
            "inference  p50 {:.2} ms, p95 {:.2} ms (trunk + head, tract with {} kernels; {} convolutions Kestrel's)",
            k.p50_ms, k.p95_ms, k.kernels, k.replaced
        );
    }
    println!(
        "per frame  decode {:.2} ms ({}x{} MJPEG), preprocess {:.2} ms, postprocess {:.3} ms = {:.0}% of inference",
        r.decode_ms,
        r.frame[0],
        r.frame[1],
        r.preprocess_ms,
        r.postprocess_ms,
        r.overhead_ratio * 100.0
    );
    if let Some(z) = r.zune_decode_ms {
        println!(
            "  the same frame with zune-jpeg (pure Rust): {z:.2} ms, {:.2}x mozjpeg's",
            z / r.decode_ms.max(1e-9)
        );
    }
    if let Some(m) = r.peak_rss_mb {
        println!("peak RSS   {m:.1} MB");
    }
    if let Some(o) = &r.onnxruntime {
        println!(
            "onnxruntime {} on model.onnx: load {:.0} ms, p50 {:.2} ms, p95 {:.2} ms",
            o.version, o.load_ms, o.p50_ms, o.p95_ms
        );
        for k in &r.kernels {
            if let (Some(ratio), Some([lo, hi])) = (k.ratio_vs_onnxruntime, k.ratio_spread) {
                println!(
                    "  {} / onnxruntime = {ratio:.2}x (rounds {lo:.2}-{hi:.2}x, {} rounds)",
                    k.kernels,
                    k.round_p50_ms.len()
                );
            }
        }
    }
    if let Some(f) = &r.frame_rate {
        println!(
            "frame rate decode + inference, {} frames a way: one thread {:.1} fps; {} threads on each frame {:.1} fps ({:.2}x, rounds {:.2}-{:.2}x); {} frames in flight, one thread each, {:.1} fps ({:.2}x, rounds {:.2}-{:.2}x)",
            f.frames,
            f.one_thread_fps,
            r.threads,
            f.intra_op_fps,
            f.intra_op_speedup,
            f.intra_op_spread[0],
            f.intra_op_spread[1],
            r.threads,
            f.in_flight_fps,
            f.in_flight_speedup,
            f.in_flight_spread[0],
            f.in_flight_spread[1],
        );
    }
    if r.kernels.iter().any(|k| k.profile.is_some()) {
        print_profile(&r.kernels);
    }
    Ok(())
}

/// The `--profile` tables: ms per run by operator kind, then by operator, one column per kernel
/// choice.
fn print_profile(results: &[KernelsResult]) {
    let profiles: Vec<(&str, &Profile)> = results
        .iter()
        .filter_map(|k| k.profile.as_ref().map(|p| (k.kernels.as_str(), p)))
        .collect();
    let header: String = profiles.iter().map(|(n, _)| format!("{n:>22}")).collect();
    println!(
        "\nprofile (ms per run, trunk + head)\n{:<22}{header}",
        "kind"
    );
    for kind in OpKind::ALL {
        let cells: String = profiles
            .iter()
            .map(|(_, p)| {
                let ms = p.by_kind.get(&kind).copied().unwrap_or(0.0);
                format!("{:>14.3} ({:>3.0}%)", ms, 100.0 * ms / p.total_ms.max(1e-9))
            })
            .collect();
        println!("{:<22}{cells}", kind.name());
    }
    let totals: String = profiles
        .iter()
        .map(|(_, p)| format!("{:>22.3}", p.total_ms))
        .collect();
    println!("{:<22}{totals}", "total");
    for (name, p) in &profiles {
        println!("\n{name}: by operator (ms per run, nodes)");
        let mut ops: Vec<_> = p.by_op.iter().collect();
        ops.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        for (op, (ms, n)) in ops.iter().take(12) {
            println!("  {op:<32}{ms:>9.3} {n:>5}");
        }
        println!("\n{name}: slowest nodes (ms per run, output shape)");
        for t in &p.slowest {
            println!("  {:<40}{:<24}{:>9.3}  {}", t.node, t.op, t.ms, t.shape);
        }
    }
}
