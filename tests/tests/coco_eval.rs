//! Kestrel's COCO-style detection evaluation against pycocotools' `COCOeval`, the reference every
//! detection paper's numbers come from. Seeded random scenes are evaluated by `kestrel_shared::eval`
//! and, through the COCO JSON it writes, by pycocotools (`tests/python/coco_eval.py`); mAP@0.5,
//! mAP@0.75, mAP@0.5:0.95 and every class's AP must agree within 0.005.

use std::process::Command;

use kestrel_e2e::{python, workspace};
use kestrel_shared::{BBox, Detection};
use kestrel_trainer::data::annotated::{AnnotatedImage, Object};
use kestrel_trainer::eval::{
    DetectionMetrics, EvalInput, coco_ground_truth_json, coco_results_json, evaluate,
};
use serde_json::Value;

const TOL: f64 = 0.005;
const W: f32 = 320.0;
const H: f32 = 240.0;

/// SplitMix64: small, seeded, good enough for test scenes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }
    /// Uniform integer in [0, n).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f32) -> bool {
        self.f32() < p
    }
}

/// How a random scene set is made.
struct Scenes {
    seed: u64,
    images: usize,
    /// Categories written to the COCO file; detections use all of them.
    classes: usize,
    /// Ground truth only uses classes below this (the others have none: pycocotools' -1).
    gt_classes: usize,
    max_objects: usize,
    /// Chance a ground-truth object is not detected at all.
    miss: f32,
    /// Largest box jitter, as a fraction of the box size (sets the IoU spread).
    jitter: f32,
    /// Chance of a second, worse detection on an object already detected.
    duplicate: f32,
    /// Chance a detection gets the wrong class.
    confuse: f32,
    /// Random false positives per image: 0 ..= this.
    max_false: usize,
    /// False positives' scores are uniform in [0, this).
    false_score: f32,
}

fn random_box(rng: &mut Rng) -> BBox {
    let w = rng.range(12.0, 120.0);
    let h = rng.range(12.0, 120.0);
    let x = rng.range(0.0, W - w);
    let y = rng.range(0.0, H - h);
    BBox::new(x, y, x + w, y + h)
}

fn jittered(rng: &mut Rng, b: &BBox, jitter: f32) -> BBox {
    let s = rng.range(0.0, jitter);
    let (cx, cy) = b.center();
    let (w, h) = (b.width(), b.height());
    BBox::from_center(
        cx + rng.range(-s, s) * w,
        cy + rng.range(-s, s) * h,
        w * (1.0 + rng.range(-s, s)),
        h * (1.0 + rng.range(-s, s)),
    )
    .clamp(W, H)
}

impl Scenes {
    fn make(&self) -> (Vec<AnnotatedImage>, Vec<Vec<Detection>>) {
        let mut rng = Rng(self.seed);
        let mut images = Vec::new();
        let mut all_dets = Vec::new();
        for i in 0..self.images {
            let n = rng.below(self.max_objects + 1);
            let objects: Vec<Object> = (0..n)
                .map(|_| Object {
                    class: rng.below(self.gt_classes),
                    bbox: random_box(&mut rng),
                })
                .collect();
            let mut dets = Vec::new();
            for o in &objects {
                if rng.chance(self.miss) {
                    continue;
                }
                let copies = if rng.chance(self.duplicate) { 2 } else { 1 };
                for _ in 0..copies {
                    let class = if rng.chance(self.confuse) {
                        rng.below(self.classes)
                    } else {
                        o.class
                    };
                    dets.push(Detection {
                        class,
                        score: rng.range(0.2, 1.0),
                        bbox: jittered(&mut rng, &o.bbox, self.jitter),
                    });
                }
            }
            for _ in 0..rng.below(self.max_false + 1) {
                dets.push(Detection {
                    class: rng.below(self.classes),
                    score: rng.range(0.0, self.false_score),
                    bbox: random_box(&mut rng),
                });
            }
            // The model's output order is arbitrary: do not hand the evaluators sorted lists.
            for k in (1..dets.len()).rev() {
                dets.swap(k, rng.below(k + 1));
            }
            images.push(AnnotatedImage {
                path: format!("scene{i:03}.png").into(),
                width: W as u32,
                height: H as u32,
                objects,
                ignored: Vec::new(),
            });
            all_dets.push(dets);
        }
        (images, all_dets)
    }
}

/// Edge cases on exact numbers: integer boxes whose detections sit at IoU k/20 (0.5, 0.55, ...,
/// exactly on the thresholds), scores in quarters (many ties, within and across images), pairs of
/// overlapping objects of one class where a detection overlaps both (it must take the better one),
/// and more than 100 higher-scored false positives of class 0 in some images (COCO's per-image
/// cap: the true positives behind them do not count).
fn edge_scenes(seed: u64) -> (Vec<AnnotatedImage>, Vec<Vec<Detection>>) {
    let mut rng = Rng(seed);
    let mut images = Vec::new();
    let mut all_dets = Vec::new();
    for i in 0..12 {
        let mut objects = Vec::new();
        let mut dets = Vec::new();
        for j in 0..4 {
            let class = rng.below(2);
            let (x, y) = ((j * 70 + 5) as f32, (rng.below(100) + 10) as f32);
            let h = (rng.below(40) + 20) as f32;
            objects.push(Object {
                class,
                bbox: BBox::new(x, y, x + 20.0, y + h),
            });
            // Width k of 20, same height and corner: IoU exactly k/20, k = 8..=20.
            let k = (rng.below(13) + 8) as f32;
            dets.push(Detection {
                class,
                score: rng.below(5) as f32 / 4.0,
                bbox: BBox::new(x, y, x + k, y + h),
            });
        }
        // P and Q = P shifted by s: IoU (20 - s) / (20 + s). One detection between them (shift
        // d < s, closer to Q when d > s/2), one exactly on P.
        let class = rng.below(2);
        let (x, y) = (250.0, (rng.below(150) + 10) as f32);
        let s = (rng.below(5) + 2) as f32;
        let d = (rng.below(s as usize - 1) + 1) as f32;
        for dx in [0.0, s] {
            objects.push(Object {
                class,
                bbox: BBox::new(x + dx, y, x + dx + 20.0, y + 20.0),
            });
        }
        for dx in [d, 0.0] {
            dets.push(Detection {
                class,
                score: rng.below(5) as f32 / 4.0,
                bbox: BBox::new(x + dx, y, x + dx + 20.0, y + 20.0),
            });
        }
        if i < 3 {
            // Scores 0.5 and up: the class-0 detections above scored 0 or 0.25 fall past the cap.
            for _ in 0..120 {
                let x = rng.below(300) as f32;
                let y = rng.below(220) as f32;
                dets.push(Detection {
                    class: 0,
                    score: (rng.below(3) + 2) as f32 / 4.0,
                    bbox: BBox::new(x, y, x + 15.0, y + 15.0),
                });
            }
        }
        images.push(AnnotatedImage {
            path: format!("edge{i:03}.png").into(),
            width: W as u32,
            height: H as u32,
            objects,
            ignored: Vec::new(),
        });
        all_dets.push(dets);
    }
    (images, all_dets)
}

/// pycocotools' numbers for the same scenes, through the COCO JSON Kestrel writes.
fn pycocotools(images: &[AnnotatedImage], dets: &[Vec<Detection>], classes: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<String> = (0..classes).map(|c| format!("class{c}")).collect();
    let gt_path = dir.path().join("gt.json");
    let res_path = dir.path().join("results.json");
    std::fs::write(
        &gt_path,
        coco_ground_truth_json(images, &labels).to_string(),
    )
    .unwrap();
    std::fs::write(&res_path, coco_results_json(dets).to_string()).unwrap();
    let out = Command::new(python())
        .arg(workspace().join("tests/python/coco_eval.py"))
        .arg(&gt_path)
        .arg(&res_path)
        .output()
        .expect("python3 with pycocotools is needed (bash scripts/setup.sh)");
    assert!(
        out.status.success(),
        "pycocotools failed (is it installed? bash scripts/setup.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kestrel(images: &[AnnotatedImage], dets: &[Vec<Detection>], classes: usize) -> DetectionMetrics {
    let gt: Vec<Vec<Object>> = images.iter().map(|i| i.objects.clone()).collect();
    evaluate(
        &EvalInput {
            ground_truth: &gt,
            ignored: &[],
            detections: dets,
            classes,
        },
        0.5,
    )
    .unwrap()
}

/// Both evaluators on one scene set; asserts agreement and returns Kestrel's metrics.
fn compare(
    name: &str,
    images: &[AnnotatedImage],
    dets: &[Vec<Detection>],
    classes: usize,
) -> DetectionMetrics {
    let ours = kestrel(images, dets, classes);
    let coco = pycocotools(images, dets, classes);
    let pairs = [
        ("map50", ours.map50, coco["map50"].as_f64().unwrap()),
        ("map75", ours.map75, coco["map75"].as_f64().unwrap()),
        (
            "map50_95",
            ours.map50_95,
            coco["map50_95"].as_f64().unwrap(),
        ),
    ];
    for (what, k, p) in pairs {
        println!(
            "{name}: {what} kestrel {k:.6} pycocotools {p:.6} diff {:.2e}",
            (k - p).abs()
        );
        assert!(
            (k - p).abs() <= TOL,
            "{name}: {what} kestrel {k} vs pycocotools {p}"
        );
    }
    let per_class = coco["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), classes);
    for (c, pc) in ours.per_class.iter().zip(per_class) {
        assert_eq!(pc["category_id"].as_u64().unwrap() as usize, c.class + 1);
        for (what, k, p) in [
            ("ap50", c.ap50, pc["ap50"].as_f64().unwrap()),
            ("ap50_95", c.ap50_95, pc["ap50_95"].as_f64().unwrap()),
        ] {
            match k {
                Some(k) => assert!(
                    (k - p).abs() <= TOL,
                    "{name}: class {} {what} kestrel {k} vs pycocotools {p}",
                    c.class
                ),
                None => assert_eq!(p, -1.0, "{name}: class {} has no GT for Kestrel", c.class),
            }
        }
    }
    ours
}

#[test]
fn map_agrees_with_pycocotools_on_random_scenes() {
    let typical = Scenes {
        seed: 7,
        images: 40,
        classes: 3,
        gt_classes: 3,
        max_objects: 5,
        miss: 0.15,
        jitter: 0.25,
        duplicate: 0.1,
        confuse: 0.05,
        max_false: 3,
        false_score: 0.7,
    };
    let (images, dets) = typical.make();
    let a = compare("typical", &images, &dets, 3);
    // Not a trivial agreement (both 0 or both 1): a real spread of IoUs and ranks.
    assert!(a.map50 > 0.4 && a.map50 < 0.98, "{}", a.map50);
    assert!(
        a.map75 < a.map50 && a.map50_95 < a.map50,
        "{} {} {}",
        a.map50,
        a.map75,
        a.map50_95
    );

    // Many confident false positives, more misses and looser boxes, and a fourth category that
    // has detections but no ground truth (pycocotools' -1, left out of the mean).
    let noisy = Scenes {
        seed: 11,
        images: 40,
        classes: 4,
        gt_classes: 3,
        max_objects: 5,
        miss: 0.3,
        jitter: 0.4,
        duplicate: 0.3,
        confuse: 0.15,
        max_false: 30,
        false_score: 1.0,
    };
    let (images, dets) = noisy.make();
    let b = compare("noisy", &images, &dets, 4);
    assert_eq!(b.per_class[3].ap50, None);
    assert!(
        b.map50 > 0.05 && b.map50 < a.map50 - 0.1,
        "{} vs {}",
        b.map50,
        a.map50
    );
}

#[test]
fn map_agrees_with_pycocotools_on_threshold_edges_ties_and_the_cap() {
    let (images, dets) = edge_scenes(3);
    assert!(dets[0].iter().filter(|d| d.class == 0).count() > 100);
    let m = compare("edges", &images, &dets, 2);
    assert!(m.map50 > 0.1 && m.map50 < 0.99, "{}", m.map50);
}
