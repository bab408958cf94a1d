//! `kestrel demo`: the main job, end to end on this machine.
//!
//! Today: fetch the weights, classify the sample photos with burn, export the frozen trunk to
//! ONNX, run it in the edge runtime (tract) on the same photos, check both sides agree, and train
//! a classification head on a synthetic set through the two-model approach (then fine-tune it),
//! and a multi-object grid detector on synthetic scenes; its signed bundle is deployed over a
//! serial line to a `kestrel-edge agent` process, whose detections come back (`demo_board`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use kestrel_edge::{Threads, Trunk};
use kestrel_shared::{CutPoint, PreprocessSpec};
use serde_json::json;

use crate::classify::finetune::FineTuneConfig;
use crate::classify::{ClassifyOptions, TrainConfig, train_classify};
use crate::data::annotations::Format;
use crate::data::scenes::{Preset, SynthDetect};
use crate::data::synth::{SHAPES, SynthClassify, write_classify};
use crate::detect::run::{DetectOptions, train_detect};
use crate::detect::train::{DecodeSettings, DetectHeadKind, DetectTrainConfig};
use crate::imagenet::{SAMPLES, class_names};
use crate::predict::Classifier;
use crate::pretrained::Pretrained;
use crate::weights::default_cache_dir;

/// Largest difference between burn and tract outputs the demo accepts (the golden tests' tolerance).
pub const MAX_ABS_DIFF: f32 = 1e-4;

/// What the demo measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Sample photos whose top-1 class was the expected one.
    pub top1_correct: usize,
    /// Sample photos.
    pub photos: usize,
    /// Largest difference between burn's and tract's trunk outputs on the photos.
    pub max_abs_diff_burn_vs_tract: f32,
    /// Milliseconds per photo through burn's trunk.
    pub burn_trunk_ms: f64,
    /// Milliseconds per photo through tract's trunk (edge runtime).
    pub tract_trunk_ms: f64,
    /// The trunk directory.
    pub trunk_dir: PathBuf,
}

/// Run the demo, writing photos, the trunk and `metrics.json` under `out`.
pub fn run(pretrained: &Pretrained, cut: CutPoint, out: &Path) -> anyhow::Result<DemoReport> {
    std::fs::create_dir_all(out)?;
    let spec = PreprocessSpec::imagenet();
    let mut photos = Vec::new();
    for (name, bytes, _) in SAMPLES {
        let p = out.join(name);
        std::fs::write(&p, bytes)?;
        photos.push(p);
    }

    println!(
        "== 1. ImageNet classification with the pretrained MobileNetV2 (burn, {})",
        pretrained.backend.name()
    );
    let classifier = Classifier {
        model: &pretrained.model,
        device: &pretrained.device,
        spec,
        labels: class_names(),
        batch: 8,
    };
    let mut top1_correct = 0;
    for (res, (_, _, expected)) in classifier
        .classify_files(&photos, 3)
        .into_iter()
        .zip(SAMPLES)
    {
        let p = res?;
        let best = &p.top[0];
        let ok = best.label == *expected;
        top1_correct += ok as usize;
        let top: Vec<String> = p
            .top
            .iter()
            .map(|s| format!("{} {:.1}%", s.label, 100.0 * s.score))
            .collect();
        println!(
            "   {:<12} {}   [{}]",
            p.image.file_name().unwrap_or_default().to_string_lossy(),
            top.join(", "),
            if ok { "as expected" } else { "UNEXPECTED" }
        );
    }

    println!("== 2. Export the frozen trunk (cut at {cut}) to ONNX");
    let trunk_dir = out.join("trunk");
    let info = crate::trunk_onnx::export_trunk(
        &pretrained.model,
        cut,
        spec,
        &pretrained.weights_sha256,
        &trunk_dir,
    )?;
    let size = std::fs::metadata(trunk_dir.join(&info.onnx_file))?.len();
    println!(
        "   {} ({:.1} MB, output {:?})",
        trunk_dir.join(&info.onnx_file).display(),
        size as f64 / 1e6,
        info.output_shape
    );

    println!("== 3. Run the trunk in the edge runtime (tract) and compare with burn");
    let inputs: Vec<Vec<f32>> = photos
        .iter()
        .map(|p| spec.load_and_apply(p))
        .collect::<Result<_, _>>()?;
    let trunk = Trunk::open(&trunk_dir, 1, Threads::Single)?;
    let burn_trunk = pretrained.model.clone().truncate(cut);
    let (mut max_diff, mut burn_ms, mut tract_ms) = (0f32, 0f64, 0f64);
    for x in &inputs {
        let t = Instant::now();
        let (b, _) = burn_trunk.run(x.clone(), 1, 224, 224, &pretrained.device);
        burn_ms += t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let e = trunk.embed(std::slice::from_ref(x))?.remove(0);
        tract_ms += t.elapsed().as_secs_f64() * 1e3;
        max_diff = b
            .iter()
            .zip(&e)
            .map(|(a, b)| (a - b).abs())
            .fold(max_diff, f32::max);
    }
    let n = inputs.len() as f64;
    let report = DemoReport {
        top1_correct,
        photos: photos.len(),
        max_abs_diff_burn_vs_tract: max_diff,
        burn_trunk_ms: burn_ms / n,
        tract_trunk_ms: tract_ms / n,
        trunk_dir: trunk_dir.clone(),
    };
    println!(
        "   max |burn - tract| = {:.2e}; burn {:.1} ms/photo, tract {:.1} ms/photo (first runs, one photo at a time)",
        report.max_abs_diff_burn_vs_tract, report.burn_trunk_ms, report.tract_trunk_ms
    );
    println!(
        "== 4. Transfer learning: a new head on the frozen trunk (synthetic shapes, two-model approach)"
    );
    let data = out.join("shapes");
    // Small 40-pixel pictures: far from ImageNet, so the pooled features alone are not enough and
    // fine-tuning the top blocks has something to add.
    let synth = SynthClassify {
        per_class: 60,
        size: 40,
        seed: 8,
    };
    write_classify(&synth, &data)?;
    let opts = ClassifyOptions {
        data: data.clone(),
        cut: CutPoint::Pooled,
        val_fraction: 0.25,
        strict: false,
        views: 0,
        train: TrainConfig::default(),
        fine_tune: None,
    };
    let t = Instant::now();
    let run = train_classify(
        pretrained,
        &opts,
        &default_cache_dir(),
        &out.join("run-classify"),
        false,
        &crate::progress::Bars,
    )?;
    println!(
        "   {} pictures of {} shapes: validation accuracy {:.1}% (best epoch {}), {:.1} s including embedding; run in {}",
        run.images_used,
        SHAPES.len(),
        100.0 * run.val_accuracy,
        run.best_epoch,
        t.elapsed().as_secs_f64(),
        run.run.display()
    );
    println!("== 5. Fine-tuning (phase 2): unfreeze the top 4 blocks and train them with the head");
    let ft_opts = ClassifyOptions {
        fine_tune: Some(FineTuneConfig {
            blocks: 4,
            epochs: 4,
            lr: 3e-5,
            batch_size: opts.train.batch_size,
            seed: opts.train.seed,
        }),
        ..opts
    };
    let t = Instant::now();
    let tuned = train_classify(
        pretrained,
        &ft_opts,
        &default_cache_dir(),
        &out.join("run-finetune"),
        false,
        &crate::progress::Bars,
    )?;
    println!(
        "   validation accuracy {:.1}% after fine-tuning (head only: {:.1}%), {:.1} s; run in {}",
        100.0 * tuned.val_accuracy,
        100.0 * tuned.phase1_val_accuracy.unwrap_or(f64::NAN),
        t.elapsed().as_secs_f64(),
        tuned.run.display()
    );
    println!("== 6. Object detection: a grid head on the stride-16 feature map (synthetic scenes)");
    let scenes = out.join("scenes");
    if scenes.exists() {
        std::fs::remove_dir_all(&scenes)?;
    }
    let mut synth = SynthDetect::new(Preset::Multi);
    synth.count = 600;
    synth.val_count = 150;
    synth.seed = 8;
    synth.write(&scenes, Format::Yolo, &mut |_| {})?;
    let det_opts = DetectOptions {
        data: scenes,
        annotations: None,
        width: synth.width,
        height: synth.height,
        cut: CutPoint::Features(13),
        val_fraction: 0.15,
        strict: false,
        train: DetectTrainConfig {
            head: DetectHeadKind::Grid,
            units: 64,
            optimizer: crate::classify::OptimizerKind::Adam,
            lr: 1e-3,
            epochs: 20,
            batch_size: 32,
            seed: 0,
            patience: 5,
            shift_cells: 0,
            dropout: 0.0,
            objectness: Default::default(),
            lr_schedule: Default::default(),
            single_form: Default::default(),
        },
        decode: DecodeSettings {
            score_threshold: 0.3,
            nms_iou: 0.5,
            max_detections: 100,
        },
        fine_tune: None,
    };
    let t = Instant::now();
    let det = train_detect(
        pretrained,
        &det_opts,
        &default_cache_dir(),
        &out.join("run-detect"),
        false,
        &crate::progress::Bars,
    )?;
    println!(
        "   {} training / {} validation scenes of {} classes: mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3} (best epoch {}), {:.1} s; run in {}",
        det.train_images,
        det.val_images,
        det.labels.len(),
        det.val.coco.map50,
        det.val.coco.map50_95,
        det.best_epoch,
        t.elapsed().as_secs_f64(),
        out.join("run-detect").display()
    );
    println!("   the detector as a bundle for the board (int8 head), measured in tract:");
    let bundle = crate::bundle::export_demo_detector(
        pretrained,
        &out.join("run-detect"),
        &out.join("bundle-detect"),
        &default_cache_dir(),
        &crate::progress::Bars,
    )?;
    println!(
        "== 7. The edge runtime (kestrel-edge, tract) on a replayed camera video of the validation scenes"
    );
    let edge = edge_on_video(&out.join("bundle-detect"), &out.join("scenes"), out)?;
    println!(
        "== 8. The board: the bundle signed, deployed over a serial line to a kestrel-edge agent (a replay of validation scenes as its camera), its detections read back"
    );
    let scenes = crate::data::annotations::load(&out.join("scenes"), false)?;
    let board = crate::demo_board::run(
        &out.join("bundle-detect"),
        &scenes.val,
        &det.labels,
        out,
        &crate::progress::Bars,
    )?;
    println!(
        "   {} scenes came back at {:.1} fps: mAP@0.5 {:.3} from the board, {:.3} from the same bundle on this machine; {} bytes on the line in {:.1} s; snapshot {}",
        board.scenes,
        board.fps,
        board.map50,
        board.host_map50,
        board.bytes_sent,
        board.deploy_seconds,
        board.snapshot.display()
    );
    let metrics = out.join("metrics.json");
    std::fs::write(
        &metrics,
        serde_json::to_string_pretty(&json!({
            "demo": report,
            "trunk": info,
            "classify": run,
            "fine_tuned": tuned,
            "detect": det,
            "bundle": bundle,
            "edge": edge,
            "board": board,
        }))? + "\n",
    )?;
    println!(
        "== metrics: top-1 {}/{} sample photos; written to {}",
        report.top1_correct,
        report.photos,
        metrics.display()
    );
    Ok(report)
}

/// Section 7: the validation scenes as a 2x-size MJPEG video (a 640x480 camera), run through the
/// `kestrel-edge` binary with the exported bundle; fps, latency, memory and the mAP on the video.
fn edge_on_video(bundle: &Path, scenes: &Path, out: &Path) -> anyhow::Result<serde_json::Value> {
    let data = crate::data::annotations::load(scenes, false)?;
    let pictures: Vec<PathBuf> = data.val.iter().map(|a| a.path.clone()).collect();
    let video = out.join("val-video.mjpeg");
    let (w, h) = crate::video::write_mjpeg(&pictures, &video, 2, 85)?;
    let bin = crate::video::edge_binary()?;
    let source = format!("mjpeg:{}", video.display());
    let run = crate::video::run_edge(&bin, bundle, &source, &["--stats"])?;
    let s = &run.summary.stats;
    let m = crate::video::video_map(&run.results, &data.val, 2.0, data.labels.len())?;
    println!(
        "   {} frames of {w}x{h} MJPEG: {:.1} fps on one core; ms p50/p95: inference {:.1}/{:.1}, decode {:.1}/{:.1}, preprocess {:.1}/{:.1}, postprocess {:.2}/{:.2}",
        s.frames,
        s.fps,
        s.latency.inference.p50_ms,
        s.latency.inference.p95_ms,
        s.latency.decode.p50_ms,
        s.latency.decode.p95_ms,
        s.latency.preprocess.p50_ms,
        s.latency.preprocess.p95_ms,
        s.latency.postprocess.p50_ms,
        s.latency.postprocess.p95_ms,
    );
    println!(
        "   first result after {:.0} ms, peak RSS {:.1} MB; detection mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3} on the video (boxes in camera pixels)",
        run.summary.first_result_ms.unwrap_or(f64::NAN),
        run.summary.peak_rss_mb.unwrap_or(f64::NAN),
        m.map50,
        m.map50_95
    );
    Ok(json!({
        "video": video,
        "frame": [w, h],
        "summary": run.summary,
        "map50": m.map50,
        "map50_95": m.map50_95,
    }))
}
