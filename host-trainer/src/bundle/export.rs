//! The export itself: calibrate, write the files and the manifest, measure the bundle in tract.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kestrel_edge::{Bundle, Model, Threads, Trunk};
use kestrel_shared::hash::sha256_hex;
use kestrel_shared::manifest::{
    BundleFiles, Calibration, CalibrationMethod, ColorOrder, HEAD_FILE, HEAD_NNEF_FILE, InputSpec,
    Layout, MANIFEST_FILE, MANIFEST_SCHEMA_VERSION, MODEL_FILE, Manifest, MetricSet, ModelFile,
    NnefFiles, Precision, Quantization, QuantizeMode, QuantizedLayer, TRUNK_FILE, TRUNK_NNEF_FILE,
    Task, TensorInfo, ValidationMetrics,
};
use prost::Message;
use serde::Serialize;
use tract_onnx::pb::ModelProto;

use super::calibrate::calibrate;
use super::evaluate::{Evaluation, agreement, evaluate_bundle, max_abs_diff};
use super::layers::{self, Layer, Net};
use super::onnx_graph::{GraphIo, QuantPlan, emit, merge};
use super::source::{self, RunSource};
use crate::classify::embed::{EmbeddingCache, embed_samples};
use crate::data::Sample;
use crate::pretrained::Pretrained;
use crate::progress::Progress;
use crate::trunk_onnx::INPUT_NAME;

/// Settings of `kestrel export`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ExportOptions {
    /// What to quantize.
    pub quantize: QuantizeMode,
    /// Training pictures to calibrate activation ranges on.
    pub calibration: usize,
    /// Range rule.
    pub method: CalibrationMethod,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            quantize: QuantizeMode::Head,
            calibration: 100,
            method: CalibrationMethod::MinMax,
        }
    }
}

/// Median milliseconds per run in tract, one thread, batch of one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// The float trunk.
    pub trunk_fp32_ms: f64,
    /// The bundle's trunk.
    pub trunk_ms: f64,
    /// The float head.
    pub head_fp32_ms: f64,
    /// The bundle's head.
    pub head_ms: f64,
}

/// What an export wrote and measured.
#[derive(Debug, Clone, Serialize)]
pub struct BundleReport {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its manifest (sizes, metrics, quantization).
    pub manifest: Manifest,
    /// Size of the float head, for comparison.
    pub head_fp32_size: u64,
    /// Size of the float trunk, for comparison.
    pub trunk_fp32_size: u64,
    /// Timings in tract on this machine.
    pub latency: Latency,
}

/// Bundle quantization errors a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ExportBundleError {
    /// A file of the bundle could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Calibration asked for no pictures.
    #[error(
        "--calibration must be at least 1 picture to quantize (got 0); use --quantize none for a float bundle"
    )]
    NoCalibration,
}

/// `count` samples spread evenly over `all` (every class of a sorted folder is represented).
fn spread(all: &[Sample], count: usize) -> Vec<Sample> {
    if all.len() <= count {
        return all.to_vec();
    }
    (0..count)
        .map(|i| all[i * all.len() / count].clone())
        .collect()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ExportBundleError> {
    std::fs::write(path, bytes).map_err(|source| ExportBundleError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Dimensions with the symbolic batch first.
fn batch_dims(shape: &[usize]) -> Vec<Option<usize>> {
    std::iter::once(None)
        .chain(shape.iter().skip(1).map(|&d| Some(d)))
        .collect()
}

/// Depthwise convolutions stay float32, in the trunk and in a fine-tuned head: tract has no int8
/// depthwise kernel (an int8 one goes through im2col). Measured on one thread: MobileNetV2 at
/// 224x224 with every convolution in int8, 127 ms, without the depthwise ones, 59 ms (float32:
/// 20 to 40 ms on this busy machine); a fine-tuned head (features.14-18), 8.9 ms against 3.4 ms.
/// Their weights are about 3% of the trunk's.
fn without_depthwise(mut plan: QuantPlan, net: &Net) -> QuantPlan {
    for l in net.weighted() {
        if let Layer::Conv(c) = l
            && c.is_depthwise()
        {
            plan.remove(&c.name);
        }
    }
    plan
}

/// The manifest records of the layers in `plan`.
fn records(file: &str, net: &Net, plan: &QuantPlan) -> Vec<QuantizedLayer> {
    net.weighted()
        .into_iter()
        .filter_map(|l| {
            let name = l.name()?;
            let p = plan.get(name)?;
            let (op, channels) = match l {
                Layer::Conv(c) => ("ConvInteger", c.out_channels()),
                Layer::Dense(d) => ("MatMulInteger", d.outputs),
                _ => return None,
            };
            Some(QuantizedLayer {
                file: file.to_string(),
                layer: name.to_string(),
                op: op.to_string(),
                input_scale: p.input.scale,
                input_zero_point: p.input.zero_point,
                input_range: p.input.range,
                channels,
            })
        })
        .collect()
}

/// The models of a bundle, encoded: the three ONNX files and trunk and head again in NNEF.
struct Models {
    trunk: Vec<u8>,
    head: Vec<u8>,
    model: Vec<u8>,
    trunk_nnef: Vec<u8>,
    head_nnef: Vec<u8>,
}

impl Models {
    /// Encode the ONNX graphs and convert trunk and head to NNEF (deterministically, so the same
    /// trunk always has the same NNEF hash and a board that has it is not sent it again).
    fn new(trunk: Vec<u8>, head: &ModelProto, model: &ModelProto) -> anyhow::Result<Self> {
        let head = head.encode_to_vec();
        Ok(Models {
            trunk_nnef: kestrel_edge::nnef::onnx_to_nnef(&trunk)
                .map_err(|e| anyhow::anyhow!("converting the trunk to NNEF: {e:#}"))?,
            head_nnef: kestrel_edge::nnef::onnx_to_nnef(&head)
                .map_err(|e| anyhow::anyhow!("converting the head to NNEF: {e:#}"))?,
            model: model.encode_to_vec(),
            trunk,
            head,
        })
    }
}

/// What every bundle of one export shares: the run, the weights, the graphs' inputs and outputs.
struct ExportContext<'a> {
    src: &'a RunSource,
    weights_sha256: &'a str,
    trunk_io: &'a GraphIo,
    head_io: &'a GraphIo,
}

/// Write the models and a manifest (with `metrics`) into `dir`.
fn write_bundle(
    dir: &Path,
    cx: &ExportContext,
    models: &Models,
    quantization: Quantization,
    metrics: ValidationMetrics,
) -> Result<Manifest, ExportBundleError> {
    let ExportContext {
        src,
        weights_sha256,
        trunk_io,
        head_io,
    } = *cx;
    let (trunk_int8, head_int8) = match quantization.mode {
        QuantizeMode::None => (false, false),
        QuantizeMode::Head => (false, true),
        QuantizeMode::All => (true, true),
    };
    let precision = |int8: bool| {
        if int8 {
            Precision::Int8
        } else {
            Precision::Float32
        }
    };
    let picture = src.spec.input_shape(1).to_vec();
    let file =
        |name: &str, bytes: &[u8], int8: bool, input: TensorInfo, output: TensorInfo| ModelFile {
            path: name.to_string(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            precision: precision(int8),
            input,
            output,
        };
    let trunk_in = TensorInfo::float(INPUT_NAME, picture.clone());
    let trunk_out = TensorInfo::float(&trunk_io.output, src.head_input.clone());
    let head_out = TensorInfo::float(&head_io.output, src.head_output.clone());
    let manifest = Manifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        kestrel_version: env!("CARGO_PKG_VERSION").into(),
        task: src.task,
        labels: src.labels.clone(),
        input: InputSpec {
            layout: Layout::Nchw,
            color: ColorOrder::Rgb,
            preprocess: src.spec,
        },
        cut: src.cut,
        fine_tuned_blocks: src.fine_tuned_blocks,
        architecture: "mobilenet_v2".into(),
        weights_sha256: weights_sha256.to_string(),
        files: BundleFiles {
            trunk: file(
                TRUNK_FILE,
                &models.trunk,
                trunk_int8,
                trunk_in.clone(),
                trunk_out.clone(),
            ),
            head: file(
                HEAD_FILE,
                &models.head,
                head_int8,
                trunk_out.clone(),
                head_out.clone(),
            ),
            model: file(
                MODEL_FILE,
                &models.model,
                trunk_int8 || head_int8,
                trunk_in.clone(),
                head_out.clone(),
            ),
            nnef: Some(NnefFiles {
                trunk: file(
                    TRUNK_NNEF_FILE,
                    &models.trunk_nnef,
                    trunk_int8,
                    trunk_in,
                    trunk_out.clone(),
                ),
                head: file(
                    HEAD_NNEF_FILE,
                    &models.head_nnef,
                    head_int8,
                    trunk_out.clone(),
                    head_out,
                ),
            }),
        },
        quantization,
        decode: src.decode,
        metrics,
        release: Some(super::release::next_release(
            kestrel_shared::sign::default_key_dir().as_deref(),
        )),
        signature: None,
    };
    std::fs::create_dir_all(dir).map_err(|source| ExportBundleError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write(&dir.join(TRUNK_FILE), &models.trunk)?;
    write(&dir.join(HEAD_FILE), &models.head)?;
    write(&dir.join(MODEL_FILE), &models.model)?;
    write(&dir.join(TRUNK_NNEF_FILE), &models.trunk_nnef)?;
    write(&dir.join(HEAD_NNEF_FILE), &models.head_nnef)?;
    write(&dir.join(MANIFEST_FILE), manifest.to_json().as_bytes())?;
    Ok(manifest)
}

/// Median milliseconds of `model` on zeros, after one warm-up run.
fn median_ms(model: &Model, runs: usize) -> anyhow::Result<f64> {
    let input = vec![0f32; model.input_shape().iter().product()];
    model.run(&input)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        model.run(&input)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn headline(task: Task) -> &'static str {
    match task {
        Task::Classify { .. } => "accuracy",
        Task::Detect {
            head: kestrel_shared::manifest::DetectHeadKind::Single,
        } => "mean_iou",
        Task::Detect { .. } => "map50",
    }
}

/// Export the run in `run` as a bundle in `out`: see the module documentation.
pub fn export_bundle(
    pretrained: &Pretrained,
    run: &Path,
    out: &Path,
    opts: &ExportOptions,
    cache: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<BundleReport> {
    if opts.quantize != QuantizeMode::None && opts.calibration == 0 {
        return Err(ExportBundleError::NoCalibration.into());
    }
    let src = source::open(pretrained, run, cache)?;
    let emb_cache = EmbeddingCache::new(&cache.join("embeddings"));
    // The float trunk: exactly the file the run was trained on.
    let trunk_dir = pretrained.cached_trunk(src.cut, src.spec, cache)?;
    let fp32_trunk = Trunk::open(&trunk_dir, 1, Threads::Single)?;
    let fp32_trunk_bytes = std::fs::read(trunk_dir.join(&fp32_trunk.info.onnx_file))?;
    let fp32_trunk_proto = ModelProto::decode(fp32_trunk_bytes.as_slice())?;
    let trunk_io = GraphIo {
        input: INPUT_NAME.into(),
        input_dims: batch_dims(&src.spec.input_shape(1)),
        output: fp32_trunk.info.output_name.clone(),
        output_dims: batch_dims(&src.head_input),
    };
    let head_io = GraphIo {
        input: trunk_io.output.clone(),
        input_dims: batch_dims(&src.head_input),
        output: src.output_name.into(),
        output_dims: batch_dims(&src.head_output),
    };
    let meta = |part: &str| {
        vec![
            ("kestrel.part".to_string(), part.to_string()),
            ("kestrel.cut".to_string(), src.cut.to_string()),
            (
                "kestrel.quantization".to_string(),
                opts.quantize.to_string(),
            ),
        ]
    };
    let calibration_set = spread(&src.train, opts.calibration);
    let mut layers_q = Vec::new();

    // Trunk.
    let (trunk_proto, trunk_bytes, bundle_trunk) = if opts.quantize == QuantizeMode::All {
        let net = layers::trunk(&pretrained.model.clone().truncate(src.cut));
        let bar = progress.start(
            "reading calibration pictures",
            Some(calibration_set.len() as u64),
        );
        let mut pictures = Vec::new();
        for s in &calibration_set {
            bar.advance(1);
            match src.spec.load_and_apply(&s.path) {
                Ok(x) => pictures.push(x),
                Err(e) => tracing::warn!("calibration skips {}: {e}", s.path.display()),
            }
        }
        bar.finish();
        let taps = emit(&net, &trunk_io, None, true, meta("trunk"));
        let bar = progress.start("calibrating the trunk", None);
        let plan = calibrate(
            "the trunk",
            &taps,
            &src.spec.input_shape(1)[1..],
            &pictures,
            opts.method,
        )?;
        bar.finish();
        let plan = without_depthwise(plan, &net);
        layers_q.extend(records("trunk", &net, &plan));
        let proto = emit(&net, &trunk_io, Some(&plan), false, meta("trunk"));
        let bytes = proto.encode_to_vec();
        let mut info = fp32_trunk.info.clone();
        info.onnx_sha256 = sha256_hex(&bytes);
        let model = Model::from_bytes(&bytes, &out.join(TRUNK_FILE), 1, Threads::Single)?;
        (proto, bytes, Trunk { info, model })
    } else {
        let t = Trunk::open(&trunk_dir, 1, Threads::Single)?;
        (fp32_trunk_proto.clone(), fp32_trunk_bytes.clone(), t)
    };

    // Head, calibrated on what the bundle's trunk gives it.
    let fp32_head = emit(&src.head, &head_io, None, false, meta("head"));
    let head_proto = if opts.quantize == QuantizeMode::None {
        fp32_head.clone()
    } else {
        let features = embed_samples(
            &bundle_trunk,
            &calibration_set,
            &emb_cache,
            0,
            false,
            progress,
        )?;
        let taps = emit(&src.head, &head_io, None, true, meta("head"));
        let plan = calibrate(
            "the head",
            &taps,
            &src.head_input[1..],
            &features.x,
            opts.method,
        )?;
        let plan = without_depthwise(plan, &src.head);
        layers_q.extend(records("head", &src.head, &plan));
        emit(&src.head, &head_io, Some(&plan), false, meta("head"))
    };
    let models = Models::new(trunk_bytes, &head_proto, &merge(&trunk_proto, &head_proto))?;
    let quantization = Quantization {
        mode: opts.quantize,
        calibration: (opts.quantize != QuantizeMode::None).then_some(Calibration {
            method: opts.method,
            samples: calibration_set.len(),
        }),
        layers: layers_q,
    };
    let placeholder = ValidationMetrics {
        images: 0,
        headline: headline(src.task).into(),
        fp32: MetricSet::default(),
        bundle: MetricSet::default(),
        max_abs_diff: 0.0,
        agreement: 1.0,
    };
    let cx = ExportContext {
        src: &src,
        weights_sha256: &pretrained.weights_sha256,
        trunk_io: &trunk_io,
        head_io: &head_io,
    };
    write_bundle(out, &cx, &models, quantization.clone(), placeholder.clone())?;

    // Measure the bundle, and the float model beside it, as the board runs them.
    let bundle = Bundle::open(out)?;
    let measured = evaluate_bundle(&bundle, &src.val, &emb_cache, progress)?;
    let fp32_models = Models::new(
        fp32_trunk_bytes,
        &fp32_head,
        &merge(&fp32_trunk_proto, &fp32_head),
    )?;
    let reference_dir = tempfile::tempdir()?;
    let (reference, fp32_bundle): (Evaluation, Bundle) = if opts.quantize == QuantizeMode::None {
        (measured.clone(), Bundle::open(out)?)
    } else {
        write_bundle(
            reference_dir.path(),
            &cx,
            &fp32_models,
            Quantization {
                mode: QuantizeMode::None,
                calibration: None,
                layers: Vec::new(),
            },
            placeholder,
        )?;
        let b = Bundle::open(reference_dir.path())?;
        (evaluate_bundle(&b, &src.val, &emb_cache, progress)?, b)
    };
    let detector = matches!(src.task, Task::Detect { .. });
    let metrics = ValidationMetrics {
        images: measured.images,
        headline: headline(src.task).into(),
        fp32: reference.metrics,
        bundle: measured.metrics,
        max_abs_diff: max_abs_diff(&reference.raw, &measured.raw),
        agreement: agreement(&reference, &measured, src.labels.len(), detector),
    };
    let manifest = write_bundle(out, &cx, &models, quantization, metrics)?;
    let runs = 10;
    let latency = Latency {
        trunk_fp32_ms: median_ms(&fp32_bundle.trunk.model, runs)?,
        trunk_ms: median_ms(&bundle.trunk.model, runs)?,
        head_fp32_ms: median_ms(&fp32_bundle.head, runs)?,
        head_ms: median_ms(&bundle.head, runs)?,
    };
    Ok(BundleReport {
        dir: out.to_path_buf(),
        manifest,
        head_fp32_size: fp32_models.head.len() as u64,
        trunk_fp32_size: fp32_models.trunk.len() as u64,
        latency,
    })
}

fn mb(bytes: u64) -> String {
    if bytes >= 100_000 {
        format!("{:.2} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}

fn metric_line(name: &str, fp32: Option<f64>, bundle: Option<f64>) -> Option<String> {
    let (a, b) = (fp32?, bundle?);
    Some(format!(
        "{name} fp32 {:.1}%, bundle {:.1}% ({:+.1} points)",
        100.0 * a,
        100.0 * b,
        100.0 * (b - a)
    ))
}

/// Print what an export wrote and measured (file sizes, fp32 against bundle metrics, timings).
pub fn print_report(r: &BundleReport, out: &mut dyn Write) -> std::io::Result<()> {
    let m = &r.manifest;
    let q = &m.quantization;
    let calibration = match &q.calibration {
        Some(c) => format!(
            ", calibrated ({}) on {} training pictures",
            match c.method {
                CalibrationMethod::MinMax => "min/max".to_string(),
                CalibrationMethod::Percentile { percentile } => format!("{percentile} percentile"),
            },
            c.samples
        ),
        None => String::new(),
    };
    writeln!(
        out,
        "bundle {} (quantize {}{calibration}; {} int8 layers)",
        r.dir.display(),
        q.mode,
        q.layers.len()
    )?;
    let f = &m.files;
    let precision = |p: Precision| match p {
        Precision::Float32 => "float32",
        Precision::Int8 => "int8",
    };
    let vs = |size: u64, fp32: u64, p: Precision| match p {
        Precision::Int8 => format!(
            " (float32: {}; int8 is {:.1}% of it)",
            mb(fp32),
            100.0 * size as f64 / fp32.max(1) as f64
        ),
        Precision::Float32 => String::new(),
    };
    writeln!(
        out,
        "  trunk.onnx  {:>10}  {}{}",
        mb(f.trunk.size),
        precision(f.trunk.precision),
        vs(f.trunk.size, r.trunk_fp32_size, f.trunk.precision)
    )?;
    writeln!(
        out,
        "  head.onnx   {:>10}  {}{}",
        mb(f.head.size),
        precision(f.head.precision),
        vs(f.head.size, r.head_fp32_size, f.head.precision)
    )?;
    writeln!(
        out,
        "  model.onnx  {:>10}  trunk and head in one graph",
        mb(f.model.size)
    )?;
    if let Some(n) = &f.nnef {
        writeln!(
            out,
            "  trunk.nnef.tar {:>7}, head.nnef.tar {}: the same trunk and head in NNEF, what boards run",
            mb(n.trunk.size),
            mb(n.head.size)
        )?;
    }
    let v = &m.metrics;
    let lines: Vec<String> = [
        ("accuracy", v.fp32.accuracy, v.bundle.accuracy),
        ("mAP@0.5", v.fp32.map50, v.bundle.map50),
        ("mAP@0.5:0.95", v.fp32.map50_95, v.bundle.map50_95),
        ("mean IoU", v.fp32.mean_iou, v.bundle.mean_iou),
        (
            "class accuracy",
            v.fp32.class_accuracy,
            v.bundle.class_accuracy,
        ),
    ]
    .into_iter()
    .filter_map(|(n, a, b)| metric_line(n, a, b))
    .collect();
    writeln!(
        out,
        "  validation ({} pictures, run in tract): {}",
        v.images,
        lines.join("; ")
    )?;
    writeln!(
        out,
        "  bundle vs fp32: {} on {:.1}% of the pictures, max |raw output difference| {:.3e}",
        if matches!(m.task, Task::Detect { .. }) {
            "same detections"
        } else {
            "same top-1"
        },
        100.0 * v.agreement,
        v.max_abs_diff
    )?;
    let l = &r.latency;
    writeln!(
        out,
        "  tract, one thread: trunk {:.2} ms (float32 {:.2} ms), head {:.3} ms (float32 {:.3} ms)",
        l.trunk_ms, l.trunk_fp32_ms, l.head_ms, l.head_fp32_ms
    )
}

/// The demo's step: export a trained detector run with the defaults (int8 head) into `out` and
/// print the report.
pub fn export_demo_detector(
    pretrained: &Pretrained,
    run: &Path,
    out: &Path,
    cache: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<BundleReport> {
    let report = export_bundle(
        pretrained,
        run,
        out,
        &ExportOptions::default(),
        cache,
        progress,
    )?;
    print_report(&report, &mut std::io::stdout())?;
    Ok(report)
}
