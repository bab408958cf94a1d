//! The last section of `kestrel demo`: the detector on a board at the end of a serial line. A
//! `kestrel-edge agent` process, with a trust list and a replay of validation scenes as its
//! camera, listens on one end of a pseudo-terminal pair; the demo signs the bundle, deploys it
//! over the other end, and reads the telemetry that comes back: the board's detections, their
//! mAP@0.5 and its frame rate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kestrel_shared::Detection;
use kestrel_shared::transport::{Transport, pty_pair};
use serde::Serialize;

use crate::data::AnnotatedImage;
use crate::deploy::serial::{self, MonitorLine, SerialOptions};
use crate::deploy::{DeployReport, LocalBundle};
use crate::eval::{EvalInput, evaluate};
use crate::progress::Progress;

/// What came back from the board (`metrics.json`'s `board`).
#[derive(Debug, Clone, Serialize)]
pub struct BoardReport {
    /// How the bundle travelled.
    pub link: &'static str,
    /// mAP@0.5 of the detections that came back, on the scenes they came from.
    pub map50: f64,
    /// The same scenes through the same bundle on this machine (`kestrel-edge run`).
    pub host_map50: f64,
    /// Scenes whose detections came back.
    pub scenes: usize,
    /// The board's frames per second (paced replay).
    pub fps: f64,
    /// Bytes the deploy put on the line.
    pub bytes_sent: u64,
    /// The deploy's duration.
    pub deploy_seconds: f64,
    /// A scene with the board's detections drawn.
    pub snapshot: PathBuf,
}

/// Scenes the board's camera replays (a telemetry line per frame at its pace).
const SCENES: usize = 24;
/// The replay's pace: below the telemetry rate, so every frame's detections come back.
const FPS: f64 = 4.0;

/// The agent process, killed when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Signs `bundle` with a fresh demo key, starts an agent trusting that key on a pty with the
/// first validation scenes of `val` as its camera, deploys, and scores what comes back.
pub fn run(
    bundle: &Path,
    val: &[AnnotatedImage],
    labels: &[String],
    out: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<BoardReport> {
    let keys = crate::deploy::keygen(&out.join("keys"), true)?;
    let key = kestrel_shared::sign::SecretKey::read(&keys.secret)?;
    key.sign_bundle(bundle)?;
    let trust = out.join("board-trust");
    std::fs::write(&trust, format!("{}\n", keys.line))?;
    // The board's camera: the first scenes, in name order (the replay's order).
    let mut scenes: Vec<&AnnotatedImage> = val.iter().collect();
    scenes.sort_by(|a, b| a.path.cmp(&b.path));
    scenes.truncate(SCENES);
    let camera = out.join("board-camera");
    if camera.exists() {
        std::fs::remove_dir_all(&camera)?;
    }
    std::fs::create_dir_all(&camera)?;
    for s in &scenes {
        std::fs::copy(&s.path, camera.join(s.path.file_name().unwrap_or_default()))?;
    }
    let store = out.join("board-store");
    if store.exists() {
        std::fs::remove_dir_all(&store)?;
    }
    let (mut line, slave) = pty_pair()?;
    let tty = slave.describe();
    drop(slave);
    let edge = crate::video::edge_binary()?;
    let _agent = AgentProcess(
        Command::new(&edge)
            .args(["agent", "--threads", "1", "--store"])
            .arg(&store)
            .args(["--serial", &tty, "--trust"])
            .arg(&trust)
            .arg("--source")
            .arg(format!("dir:{}", camera.display()))
            .args(["--fps", &FPS.to_string(), "--loop"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let local = LocalBundle::open(bundle, true)?;
    let report = deploy_when_up(&mut line, &local, progress)?;
    println!("   {}", report.message);
    // Listen for one pass of the replay and a little more.
    let listen = Duration::from_secs_f64(scenes.len() as f64 / FPS + 3.0);
    let mut text = Vec::new();
    serial::monitor(&mut line, &mut text, None, Some(listen))?;
    let mut came: Vec<Option<Vec<Detection>>> = vec![None; scenes.len()];
    let mut fps = 0.0;
    let mut last = None;
    for l in String::from_utf8_lossy(&text).lines() {
        let t: MonitorLine = serde_json::from_str(l)?;
        if t.bundle.as_deref() != Some(local.id.as_str()) || t.frame == 0 {
            continue; // a heartbeat, or a frame of the bundle before
        }
        fps = f64::from(t.fps);
        let i = (t.frame % scenes.len() as u64) as usize;
        came[i].get_or_insert_with(|| t.detections.clone());
        last = Some((i, t.detections));
    }
    let seen: Vec<usize> = (0..scenes.len()).filter(|&i| came[i].is_some()).collect();
    anyhow::ensure!(
        !seen.is_empty(),
        "no detections came back from the board over {tty} in {listen:?}"
    );
    let score = |dets: &[Vec<Detection>]| -> anyhow::Result<f64> {
        let truth: Vec<_> = seen.iter().map(|&i| scenes[i].objects.clone()).collect();
        let ignored: Vec<_> = seen.iter().map(|&i| scenes[i].ignored.clone()).collect();
        Ok(evaluate(
            &EvalInput {
                ground_truth: &truth,
                ignored: &ignored,
                detections: dets,
                classes: labels.len(),
            },
            0.0,
        )?
        .map50)
    };
    let board: Vec<Vec<Detection>> = seen.iter().map(|&i| came[i].clone().unwrap()).collect();
    let map50 = score(&board)?;
    // The same scenes through the same bundle here, for comparison.
    let host = crate::video::run_edge(&edge, bundle, &format!("dir:{}", camera.display()), &[])?;
    let host_dets: Vec<Vec<Detection>> = seen
        .iter()
        .map(|&i| {
            host.results
                .iter()
                .find(|r| r.frame == i as u64)
                .map(|r| {
                    r.detections
                        .iter()
                        .map(|d| Detection {
                            class: d.class,
                            score: d.score,
                            bbox: d.bbox,
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let host_map50 = score(&host_dets)?;
    let snapshot = out.join("board-snapshot.png");
    if let Some((i, dets)) = last {
        let mut img = image::open(&scenes[i].path)?.to_rgb8();
        crate::plot::draw_detections(&mut img, &dets, labels)?;
        img.save(&snapshot)?;
    }
    Ok(BoardReport {
        link: "serial",
        map50,
        host_map50,
        scenes: seen.len(),
        fps,
        bytes_sent: report.line_bytes_out,
        deploy_seconds: report.seconds,
        snapshot,
    })
}

/// Deploys over `line`, trying again while the agent is still starting (its end reads nothing).
fn deploy_when_up(
    line: &mut dyn Transport,
    bundle: &LocalBundle,
    progress: &dyn Progress,
) -> anyhow::Result<DeployReport> {
    let start = Instant::now();
    loop {
        match serial::deploy(line, bundle, &SerialOptions::default(), progress) {
            Ok(r) => return Ok(r),
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                tracing::debug!("board not up yet: {e}");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
