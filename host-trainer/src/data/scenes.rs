//! Synthetic detection scenes: pictures with boxed objects, so detection can be trained and tested
//! without downloads.
//!
//! Two presets:
//! - `book`: the simple object detector of *Deep Learning with JavaScript* (chapter 5): a 224x224
//!   white canvas, 10 circles (radius 5-20) and 10 line segments in random colours, then exactly
//!   one target: a filled axis-aligned rectangle (independent sides 40-100 px) or a filled
//!   equilateral triangle (side 50-100 px, rotated by 0-120 degrees). As in the book's
//!   `synthetic_images.js`, the distractors are drawn first and the target over them, so the
//!   target is always fully visible; unlike the book, the target is kept entirely inside the
//!   canvas (the book lets triangle corners poke out).
//! - `multi`: 0-6 objects (circle, cross, square, star, triangle) from 12 to 96 px (on 320x240;
//!   scaled with the frame's short side, log-uniform), rotated, some striped, on photo-like
//!   backgrounds (gradients, smooth noise, stripes, blurred blobs, thin lines, sensor noise) under
//!   varying light (brightness, contrast, tint, a shading gradient). Later objects hide earlier
//!   ones; an object more than 60% hidden (by others or by the frame edge) is left out of the
//!   annotations, and every box is tight to the object's visible pixels.
//!
//! Pixels are sampled at their centres, without anti-aliasing, so boxes are whole pixels. Every
//! picture has its own random stream (seed, split, index): picture `i` is the same whatever the
//! size of the set, and the same settings always give the same bytes.

use std::f32::consts::PI;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::data::annotated::{AnnotatedImage, Object};
use image::{Rgb, RgbImage};
use kestrel_shared::BBox;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::annotations::{self, AnnotationError, DetectDataset, Format};

/// Classes of the `book` preset, in label order.
pub const BOOK_CLASSES: [&str; 2] = ["rectangle", "triangle"];
/// Classes of the `multi` preset, in label order.
pub const MULTI_CLASSES: [&str; 5] = ["circle", "cross", "square", "star", "triangle"];
/// A `multi` object hidden more than this share (by later objects or the frame) is not annotated.
pub const MAX_HIDDEN: f32 = 0.6;

/// Which kind of scene to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The book's chapter 5 task: one rectangle or triangle among circles and lines.
    Book,
    /// Several objects of five classes, occlusion, textured backgrounds and lighting.
    Multi,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 2] = [Preset::Book, Preset::Multi];

    /// The lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Book => "book",
            Preset::Multi => "multi",
        }
    }

    /// Class names, in label order.
    pub fn labels(self) -> Vec<String> {
        let names: &[&str] = match self {
            Preset::Book => &BOOK_CLASSES,
            Preset::Multi => &MULTI_CLASSES,
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Default picture size (width, height).
    pub fn default_size(self) -> (u32, u32) {
        match self {
            Preset::Book => (224, 224),
            Preset::Multi => (320, 240),
        }
    }
}

/// Class names of a preset, in label order (same as [`Preset::labels`]).
pub fn labels(preset: Preset) -> Vec<String> {
    preset.labels()
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = SceneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| SceneError::UnknownPreset(s.to_string()))
    }
}

/// Why a synthetic set cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    /// Not a preset name.
    #[error("unknown scene preset `{0}`: expected book or multi")]
    UnknownPreset(String),
    /// A frame too small to hold the preset's objects.
    #[error("{preset} scenes need at least {min}x{min} pixels, got {width}x{height}")]
    TooSmall {
        /// The preset.
        preset: Preset,
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
        /// Smallest side allowed.
        min: u32,
    },
    /// The output already holds files.
    #[error("{} is not empty: write a synthetic set into a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    /// Writing a picture failed.
    #[error("cannot write {}: {source}", path.display())]
    Image {
        /// The picture.
        path: PathBuf,
        /// Why.
        source: image::ImageError,
    },
    /// Creating a directory failed.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the annotations failed.
    #[error(transparent)]
    Annotations(#[from] AnnotationError),
}

/// Settings of a synthetic detection set; the set is a pure function of them.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthDetect {
    /// What to draw.
    pub preset: Preset,
    /// Training pictures.
    pub count: usize,
    /// Validation pictures (their own random streams, independent of `count`).
    pub val_count: usize,
    /// Picture width, pixels.
    pub width: u32,
    /// Picture height, pixels.
    pub height: u32,
    /// Seed.
    pub seed: u64,
}

impl SynthDetect {
    /// The preset's defaults: its picture size, 1000 training and 200 validation pictures, seed 0.
    pub fn new(preset: Preset) -> Self {
        let (width, height) = preset.default_size();
        SynthDetect {
            preset,
            count: 1000,
            val_count: 200,
            width,
            height,
            seed: 0,
        }
    }

    /// Smallest frame side each preset accepts: the book's targets are up to 100 px.
    fn min_side(&self) -> u32 {
        match self.preset {
            Preset::Book => 112,
            Preset::Multi => 32,
        }
    }

    /// Refuse a frame too small for the preset.
    pub fn check(&self) -> Result<(), SceneError> {
        let min = self.min_side();
        if self.width < min || self.height < min {
            return Err(SceneError::TooSmall {
                preset: self.preset,
                width: self.width,
                height: self.height,
                min,
            });
        }
        Ok(())
    }

    /// Pictures in the whole set (training and validation).
    pub fn total(&self) -> usize {
        self.count + self.val_count
    }

    /// Training picture `index` and its objects. Frames smaller than [`SynthDetect::check`]
    /// allows still render (the book's target sizes then shrink to fit).
    pub fn render(&self, index: usize) -> (RgbImage, Vec<Object>) {
        self.render_split(0, index)
    }

    /// Validation picture `index` and its objects.
    pub fn render_val(&self, index: usize) -> (RgbImage, Vec<Object>) {
        self.render_split(1, index)
    }

    fn render_split(&self, split: u64, index: usize) -> (RgbImage, Vec<Object>) {
        let scene = self.scene(split, index);
        let (img, objects) = scene.compose(&|_| true);
        (img, objects.into_iter().map(|(_, o)| o).collect())
    }

    /// The drawing plan of one picture: every random choice is made here.
    fn scene(&self, split: u64, index: usize) -> Scene {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream((split << 60) ^ index as u64);
        match self.preset {
            Preset::Book => book_scene(&mut rng, self.width, self.height),
            Preset::Multi => multi_scene(&mut rng, self.width, self.height),
        }
    }

    /// Write the set under `out` (which must be new or empty) and return it as loaded.
    ///
    /// YOLO: `out/data.yaml`, `out/images/{train,val}/NNNNNN.png`,
    /// `out/labels/{train,val}/NNNNNN.txt`. COCO: `out/{train,val}/annotations.json` with the
    /// pictures in `out/{train,val}/images/NNNNNN.png`. `val/` only when `val_count > 0`. Both
    /// read back with [`annotations::load`]`(out, ..)`. `progress` is called with the number of
    /// pictures written so far, up to [`SynthDetect::total`].
    pub fn write(
        &self,
        out: &Path,
        format: Format,
        progress: &mut dyn FnMut(usize),
    ) -> Result<DetectDataset, SceneError> {
        self.check()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SceneError::Io { path, source }
        };
        if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
            return Err(SceneError::NotEmpty(out.to_path_buf()));
        }
        let labels = self.preset.labels();
        let mut done = 0;
        let mut sets: [Vec<AnnotatedImage>; 2] = [Vec::new(), Vec::new()];
        for (split, name, n) in [(0u64, "train", self.count), (1, "val", self.val_count)] {
            if n == 0 && split == 1 {
                continue;
            }
            let dir = match format {
                Format::Yolo => out.join("images").join(name),
                Format::Coco => out.join(name).join("images"),
                // One picture folder for every split: the split is in the file name.
                Format::Voc => out.join("JPEGImages"),
            };
            let file = |i: usize| match format {
                Format::Voc => format!("{name}_{i:06}.png"),
                _ => format!("{i:06}.png"),
            };
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let indices: Vec<usize> = (0..n).collect();
            // Rendered in parallel a chunk at a time; each picture has its own stream, so the
            // result does not depend on the order.
            for chunk in indices.chunks(32) {
                let written: Vec<Result<AnnotatedImage, SceneError>> = chunk
                    .par_iter()
                    .map(|&i| {
                        let (img, objects) = self.render_split(split, i);
                        let path = dir.join(file(i));
                        img.save(&path).map_err(|source| SceneError::Image {
                            path: path.clone(),
                            source,
                        })?;
                        Ok(AnnotatedImage {
                            path,
                            width: self.width,
                            height: self.height,
                            objects,
                            ignored: Vec::new(),
                        })
                    })
                    .collect();
                for w in written {
                    sets[split as usize].push(w?);
                    done += 1;
                    progress(done);
                }
            }
        }
        let [train, val] = sets;
        match format {
            Format::Yolo => annotations::write_yolo(out, &labels, &train, &val)?,
            Format::Coco => {
                annotations::write_coco(&out.join("train/annotations.json"), &labels, &train)?;
                if !val.is_empty() {
                    annotations::write_coco(&out.join("val/annotations.json"), &labels, &val)?;
                }
            }
            Format::Voc => annotations::write_voc(out, &labels, &train, &val, &[])?,
        }
        Ok(DetectDataset {
            root: out.to_path_buf(),
            format,
            layout: match format {
                Format::Yolo => annotations::Layout::Yolo,
                Format::Coco => annotations::Layout::Coco,
                Format::Voc => annotations::Layout::Voc,
            },
            labels,
            train,
            val,
            test: Vec::new(),
            issues: Vec::new(),
            notes: Vec::new(),
            skipped_images: 0,
            skipped_objects: 0,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing

type Rgbf = [f32; 3];

/// A uniform draw in [lo, hi) that tolerates an empty range (returns lo).
fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo).max(0.0) * rng.random::<f32>()
}

fn color(rng: &mut ChaCha8Rng) -> Rgbf {
    [rng.random(), rng.random(), rng.random()].map(|v: f32| v * 255.0)
}

fn distance(a: Rgbf, b: Rgbf) -> f32 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// A random colour at least `min` away from `avoid` (the best of 30 tries otherwise).
fn contrasting(rng: &mut ChaCha8Rng, avoid: Rgbf, min: f32) -> Rgbf {
    let mut best = color(rng);
    for _ in 0..30 {
        if distance(best, avoid) >= min {
            break;
        }
        let c = color(rng);
        if distance(c, avoid) > distance(best, avoid) {
            best = c;
        }
    }
    best
}

/// A shape's outline, in frame pixels.
#[derive(Debug, Clone)]
enum Geom {
    /// Filled circle.
    Disc { cx: f32, cy: f32, r: f32 },
    /// Line segment of half-width `hw`.
    Segment {
        a: (f32, f32),
        b: (f32, f32),
        hw: f32,
    },
    /// Axis-aligned rectangle.
    Rect { x0: f32, y0: f32, x1: f32, y1: f32 },
    /// Polygon (any, even-odd rule), e.g. a rotated triangle, cross or star.
    Polygon(Vec<(f32, f32)>),
}

impl Geom {
    fn contains(&self, x: f32, y: f32) -> bool {
        match self {
            Geom::Disc { cx, cy, r } => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
            Geom::Segment { a, b, hw } => {
                let (dx, dy) = (b.0 - a.0, b.1 - a.1);
                let len2 = dx * dx + dy * dy;
                let t = if len2 > 0.0 {
                    (((x - a.0) * dx + (y - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (px, py) = (a.0 + t * dx - x, a.1 + t * dy - y);
                px * px + py * py <= hw * hw
            }
            Geom::Rect { x0, y0, x1, y1 } => x >= *x0 && x < *x1 && y >= *y0 && y < *y1,
            Geom::Polygon(pts) => {
                let mut inside = false;
                let mut j = pts.len() - 1;
                for i in 0..pts.len() {
                    let (xi, yi) = pts[i];
                    let (xj, yj) = pts[j];
                    if (yi > y) != (yj > y) && x < xj + (y - yj) * (xi - xj) / (yi - yj) {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }

    /// Analytic bounds (x0, y0, x1, y1).
    fn bounds(&self) -> (f32, f32, f32, f32) {
        match self {
            Geom::Disc { cx, cy, r } => (cx - r, cy - r, cx + r, cy + r),
            Geom::Segment { a, b, hw } => (
                a.0.min(b.0) - hw,
                a.1.min(b.1) - hw,
                a.0.max(b.0) + hw,
                a.1.max(b.1) + hw,
            ),
            Geom::Rect { x0, y0, x1, y1 } => (*x0, *y0, *x1, *y1),
            Geom::Polygon(pts) => pts.iter().fold(
                (f32::MAX, f32::MAX, f32::MIN, f32::MIN),
                |(a, b, c, d), &(x, y)| (a.min(x), b.min(y), c.max(x), d.max(y)),
            ),
        }
    }
}

/// How a shape is coloured.
#[derive(Debug, Clone)]
enum Paint {
    Solid(Rgbf),
    /// A linear shade across the shape: `base * (1 + gx*(x-cx)/r + gy*(y-cy)/r)`.
    Shaded {
        base: Rgbf,
        c: (f32, f32),
        r: f32,
        g: (f32, f32),
    },
    /// Two-colour stripes of `period` pixels along direction `dir`.
    Stripes {
        a: Rgbf,
        b: Rgbf,
        dir: (f32, f32),
        period: f32,
    },
}

impl Paint {
    fn at(&self, x: f32, y: f32) -> Rgbf {
        match self {
            Paint::Solid(c) => *c,
            Paint::Shaded { base, c, r, g } => {
                let k = 1.0 + g.0 * (x - c.0) / r + g.1 * (y - c.1) / r;
                base.map(|v| v * k)
            }
            Paint::Stripes { a, b, dir, period } => {
                let t = (x * dir.0 + y * dir.1) / period;
                if (t.floor() as i64).rem_euclid(2) == 0 {
                    *a
                } else {
                    *b
                }
            }
        }
    }
}

/// One shape to draw; `class` is set for annotated objects.
#[derive(Debug, Clone)]
struct Layer {
    geom: Geom,
    paint: Paint,
    class: Option<usize>,
}

/// Global lighting applied after drawing.
#[derive(Debug, Clone)]
struct Light {
    contrast: f32,
    brightness: f32,
    tint: Rgbf,
    /// Shading: factor `1 + strength * (t - 0.5)` with `t` in [0, 1] along `dir` across the frame.
    dir: (f32, f32),
    strength: f32,
}

/// Everything needed to draw one picture, all random choices already made.
#[derive(Debug, Clone)]
struct Scene {
    width: u32,
    height: u32,
    background: Vec<Rgbf>,
    layers: Vec<Layer>,
    light: Option<Light>,
    /// Per-pixel sensor noise: (hash seed, amplitude).
    noise: Option<(u64, f32)>,
    /// Annotated objects hidden more than this share are left out.
    max_hidden: f32,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Scene {
    /// Draw the layers `enabled` selects (all of them for the real picture; tests leave some out
    /// to see what each one changes). Returns the picture and the annotated objects that stay
    /// visible enough, each with its layer index.
    fn compose(&self, enabled: &dyn Fn(usize) -> bool) -> (RgbImage, Vec<(usize, Object)>) {
        let (w, h) = (self.width as i64, self.height as i64);
        let mut px = self.background.clone();
        // Which annotated layer (index + 1) owns each pixel; 0 for none.
        let mut owner = vec![0usize; px.len()];
        let mut area = vec![0usize; self.layers.len()];
        for (k, layer) in self.layers.iter().enumerate() {
            if !enabled(k) {
                continue;
            }
            let (bx0, by0, bx1, by1) = layer.geom.bounds();
            let (mut x0, mut y0) = (bx0.floor() as i64, by0.floor() as i64);
            let (mut x1, mut y1) = (bx1.ceil() as i64, by1.ceil() as i64);
            if layer.class.is_none() {
                // Only annotated layers need their area beyond the frame.
                (x0, y0, x1, y1) = (x0.max(0), y0.max(0), x1.min(w), y1.min(h));
            }
            for y in y0..y1 {
                for x in x0..x1 {
                    let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                    if !layer.geom.contains(fx, fy) {
                        continue;
                    }
                    area[k] += 1;
                    if x >= 0 && y >= 0 && x < w && y < h {
                        let i = (y * w + x) as usize;
                        px[i] = layer.paint.at(fx, fy);
                        owner[i] = if layer.class.is_some() { k + 1 } else { 0 };
                    }
                }
            }
        }
        // Visible pixels and their bounds per layer.
        let mut visible = vec![0usize; self.layers.len()];
        let mut bounds = vec![(i64::MAX, i64::MAX, i64::MIN, i64::MIN); self.layers.len()];
        for (i, &o) in owner.iter().enumerate() {
            if o == 0 {
                continue;
            }
            let (x, y) = (i as i64 % w, i as i64 / w);
            let b = &mut bounds[o - 1];
            *b = (b.0.min(x), b.1.min(y), b.2.max(x + 1), b.3.max(y + 1));
            visible[o - 1] += 1;
        }
        let mut objects = Vec::new();
        for (k, layer) in self.layers.iter().enumerate() {
            let Some(class) = layer.class else { continue };
            if visible[k] == 0 || (visible[k] as f32) < (1.0 - self.max_hidden) * area[k] as f32 {
                continue;
            }
            let b = bounds[k];
            let bbox = BBox::new(b.0 as f32, b.1 as f32, b.2 as f32, b.3 as f32);
            objects.push((k, Object { class, bbox }));
        }
        // Light, noise, quantisation.
        let img = RgbImage::from_fn(self.width, self.height, |x, y| {
            let i = (y as i64 * w + x as i64) as usize;
            let mut c = px[i];
            if let Some(l) = &self.light {
                let t = (x as f32 * l.dir.0 + y as f32 * l.dir.1) / (w.max(h) as f32);
                let shade = 1.0 + l.strength * (t.clamp(0.0, 1.0) - 0.5);
                for (ch, v) in c.iter_mut().enumerate() {
                    *v = (((*v - 128.0) * l.contrast + 128.0 + l.brightness) * shade * l.tint[ch])
                        .clamp(0.0, 255.0);
                }
            }
            if let Some((seed, amp)) = self.noise {
                for (ch, v) in c.iter_mut().enumerate() {
                    let r = splitmix(seed ^ ((i as u64) * 3 + ch as u64));
                    let u = (r >> 40) as f32 / (1u64 << 24) as f32;
                    *v += (u * 2.0 - 1.0) * amp;
                }
            }
            Rgb(c.map(|v| v.clamp(0.0, 255.0).round() as u8))
        });
        (img, objects)
    }
}

/// The book's scene: white canvas, 10 circles, 10 lines, then one target, fully inside.
fn book_scene(rng: &mut ChaCha8Rng, width: u32, height: u32) -> Scene {
    let (w, h) = (width as f32, height as f32);
    let mut layers = Vec::new();
    for _ in 0..10 {
        let geom = Geom::Disc {
            cx: uniform(rng, 0.0, w),
            cy: uniform(rng, 0.0, h),
            r: uniform(rng, 5.0, 20.0),
        };
        layers.push(Layer {
            geom,
            paint: Paint::Solid(color(rng)),
            class: None,
        });
    }
    for _ in 0..10 {
        let geom = Geom::Segment {
            a: (uniform(rng, 0.0, w), uniform(rng, 0.0, h)),
            b: (uniform(rng, 0.0, w), uniform(rng, 0.0, h)),
            hw: 0.75,
        };
        layers.push(Layer {
            geom,
            paint: Paint::Solid(color(rng)),
            class: None,
        });
    }
    // Target sizes shrink only on frames too small for them (below `check`'s minimum).
    let fit = ((w.min(h) - 2.0) / 100.0).clamp(0.1, 1.0);
    // Not too close to the white background, or there would be nothing to see.
    let fill = contrasting(rng, [255.0; 3], 80.0);
    let triangle = rng.random_bool(0.5);
    let geom = if triangle {
        let side = uniform(rng, 50.0, 100.0) * fit;
        let angle = uniform(rng, 0.0, 2.0 * PI / 3.0);
        let r = side / 3f32.sqrt();
        let rel: Vec<(f32, f32)> = (0..3)
            .map(|k| {
                let a = angle + PI / 2.0 + k as f32 * 2.0 * PI / 3.0;
                (a.cos() * r, a.sin() * r)
            })
            .collect();
        let (minx, miny, maxx, maxy) = Geom::Polygon(rel.clone()).bounds();
        let cx = uniform(rng, -minx, w - maxx);
        let cy = uniform(rng, -miny, h - maxy);
        Geom::Polygon(rel.into_iter().map(|(x, y)| (x + cx, y + cy)).collect())
    } else {
        let rw = uniform(rng, 40.0, 100.0) * fit;
        let rh = uniform(rng, 40.0, 100.0) * fit;
        let x0 = uniform(rng, 0.0, w - rw);
        let y0 = uniform(rng, 0.0, h - rh);
        Geom::Rect {
            x0,
            y0,
            x1: x0 + rw,
            y1: y0 + rh,
        }
    };
    layers.push(Layer {
        geom,
        paint: Paint::Solid(fill),
        class: Some(usize::from(triangle)),
    });
    Scene {
        width,
        height,
        background: vec![[255.0; 3]; (width * height) as usize],
        layers,
        light: None,
        noise: None,
        max_hidden: 1.0,
    }
}

/// A photo-like background: a gradient, smooth noise, stripes or a plain colour, with blurred
/// blobs over it.
fn background(rng: &mut ChaCha8Rng, width: u32, height: u32) -> Vec<Rgbf> {
    let (w, h) = (width as f32, height as f32);
    let short = w.min(h);
    let a = color(rng);
    let b = color(rng);
    let angle = uniform(rng, 0.0, 2.0 * PI);
    let dir = (angle.cos(), angle.sin());
    let kind = rng.random_range(0..4);
    let period = uniform(rng, 6.0, 40.0);
    let soft = rng.random_bool(0.5);
    let (gx, gy) = (rng.random_range(2..8usize), rng.random_range(2..7usize));
    let grid: Vec<Rgbf> = (0..(gx + 1) * (gy + 1)).map(|_| color(rng)).collect();
    let blobs: Vec<((f32, f32), f32, Rgbf, f32)> = (0..rng.random_range(0..5))
        .map(|_| {
            (
                (uniform(rng, 0.0, w), uniform(rng, 0.0, h)),
                uniform(rng, 0.05, 0.35) * short,
                color(rng),
                uniform(rng, 0.4, 0.9),
            )
        })
        .collect();
    let mix =
        |p: Rgbf, q: Rgbf, t: f32| -> Rgbf { std::array::from_fn(|i| p[i] + (q[i] - p[i]) * t) };
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    let mut px = Vec::with_capacity((width * height) as usize);
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let mut c = match kind {
                0 => {
                    let t = ((fx - w / 2.0) * dir.0 + (fy - h / 2.0) * dir.1) / (w.max(h)) + 0.5;
                    mix(a, b, t.clamp(0.0, 1.0))
                }
                1 => {
                    let (u, v) = (fx / w * gx as f32, fy / h * gy as f32);
                    let (i, j) = ((u as usize).min(gx - 1), (v as usize).min(gy - 1));
                    let (s, t) = (smooth(u - i as f32), smooth(v - j as f32));
                    let at = |i: usize, j: usize| grid[j * (gx + 1) + i];
                    mix(
                        mix(at(i, j), at(i + 1, j), s),
                        mix(at(i, j + 1), at(i + 1, j + 1), s),
                        t,
                    )
                }
                2 => {
                    let t = (fx * dir.0 + fy * dir.1) / period;
                    let s = if soft {
                        0.5 + 0.5 * (t * 2.0 * PI).sin()
                    } else {
                        ((t.floor() as i64).rem_euclid(2)) as f32
                    };
                    mix(a, b, s)
                }
                _ => a,
            };
            for &((bx, by), sigma, bc, strength) in &blobs {
                let d2 = (fx - bx).powi(2) + (fy - by).powi(2);
                c = mix(c, bc, strength * (-d2 / (2.0 * sigma * sigma)).exp());
            }
            px.push(c);
        }
    }
    px
}

/// The outline of a `multi` class centred at (cx, cy), extent radius `r`, rotated by `theta`.
fn multi_geom(class: usize, cx: f32, cy: f32, r: f32, theta: f32) -> Geom {
    let local: Vec<(f32, f32)> = match MULTI_CLASSES[class] {
        "circle" => return Geom::Disc { cx, cy, r },
        "cross" => {
            let t = 0.3 * r;
            vec![
                (t, t),
                (r, t),
                (r, -t),
                (t, -t),
                (t, -r),
                (-t, -r),
                (-t, -t),
                (-r, -t),
                (-r, t),
                (-t, t),
                (-t, r),
                (t, r),
            ]
        }
        "square" => {
            let s = 0.75 * r;
            vec![(-s, -s), (s, -s), (s, s), (-s, s)]
        }
        "star" => (0..10)
            .map(|k| {
                let rad = if k % 2 == 0 { r } else { 0.42 * r };
                let a = -PI / 2.0 + k as f32 * PI / 5.0;
                (rad * a.cos(), rad * a.sin())
            })
            .collect(),
        _ => (0..3)
            .map(|k| {
                let a = -PI / 2.0 + k as f32 * 2.0 * PI / 3.0;
                (r * a.cos(), r * a.sin())
            })
            .collect(),
    };
    let (c, s) = (theta.cos(), theta.sin());
    Geom::Polygon(
        local
            .into_iter()
            .map(|(x, y)| (cx + x * c - y * s, cy + x * s + y * c))
            .collect(),
    )
}

/// Several objects on a photo-like background under random light.
fn multi_scene(rng: &mut ChaCha8Rng, width: u32, height: u32) -> Scene {
    let (w, h) = (width as f32, height as f32);
    let background = background(rng, width, height);
    let mut layers = Vec::new();
    // Thin clutter lines, part of the background.
    for _ in 0..rng.random_range(0..4) {
        let geom = Geom::Segment {
            a: (uniform(rng, 0.0, w), uniform(rng, 0.0, h)),
            b: (uniform(rng, 0.0, w), uniform(rng, 0.0, h)),
            hw: uniform(rng, 0.4, 1.5),
        };
        layers.push(Layer {
            geom,
            paint: Paint::Solid(color(rng)),
            class: None,
        });
    }
    // Diameters 12-96 px at a 240 px short side, log-uniform so small objects are as common per
    // octave as large ones.
    let k = w.min(h) / 240.0;
    let (dmin, dmax) = ((12.0 * k).max(4.0), (96.0 * k).max(8.0));
    for _ in 0..rng.random_range(0..=6) {
        let class = rng.random_range(0..MULTI_CLASSES.len());
        let d = (uniform(rng, dmin.ln(), dmax.ln())).exp();
        let r = d / 2.0;
        let (cx, cy) = (uniform(rng, 0.0, w), uniform(rng, 0.0, h));
        let theta = uniform(rng, 0.0, 2.0 * PI);
        // Stand out from the background around the object.
        let mut mean = [0f32; 3];
        for (dx, dy) in [
            (0.0, 0.0),
            (-0.7, -0.7),
            (0.7, -0.7),
            (-0.7, 0.7),
            (0.7, 0.7),
        ] {
            let x = ((cx + dx * r) as i64).clamp(0, width as i64 - 1);
            let y = ((cy + dy * r) as i64).clamp(0, height as i64 - 1);
            let c = background[(y * width as i64 + x) as usize];
            (0..3).for_each(|i| mean[i] += c[i] / 5.0);
        }
        let base = contrasting(rng, mean, 110.0);
        let paint = match rng.random_range(0..4) {
            0 => Paint::Solid(base),
            1 => {
                let a = uniform(rng, 0.0, PI);
                Paint::Stripes {
                    a: base,
                    b: contrasting(rng, base, 90.0),
                    dir: (a.cos(), a.sin()),
                    period: uniform(rng, 2.0, (r / 2.0).max(3.0)),
                }
            }
            _ => Paint::Shaded {
                base,
                c: (cx, cy),
                r,
                g: (uniform(rng, -0.3, 0.3), uniform(rng, -0.3, 0.3)),
            },
        };
        layers.push(Layer {
            geom: multi_geom(class, cx, cy, r, theta),
            paint,
            class: Some(class),
        });
    }
    let angle = uniform(rng, 0.0, 2.0 * PI);
    let light = Light {
        contrast: uniform(rng, 0.65, 1.3),
        brightness: uniform(rng, -45.0, 45.0),
        tint: std::array::from_fn(|_| uniform(rng, 0.88, 1.12)),
        dir: (angle.cos(), angle.sin()),
        strength: uniform(rng, 0.0, 0.6),
    };
    let noise = (rng.random::<u64>(), uniform(rng, 0.0, 12.0));
    Scene {
        width,
        height,
        background,
        layers,
        light: Some(light),
        noise: Some(noise),
        max_hidden: MAX_HIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(preset: Preset, seed: u64) -> SynthDetect {
        SynthDetect {
            count: 3,
            val_count: 2,
            seed,
            ..SynthDetect::new(preset)
        }
    }

    fn inside_frame(b: &BBox, w: u32, h: u32) -> bool {
        b.is_valid() && b.x0 >= 0.0 && b.y0 >= 0.0 && b.x1 <= w as f32 && b.y1 <= h as f32
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_pictures() {
        for preset in Preset::ALL {
            for format in [Format::Yolo, Format::Coco] {
                let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
                let mut calls = Vec::new();
                let a = small(preset, 5)
                    .write(dirs[0].path(), format, &mut |n| calls.push(n))
                    .unwrap();
                assert_eq!(calls, vec![1, 2, 3, 4, 5]);
                let b = small(preset, 5)
                    .write(dirs[1].path(), format, &mut |_| {})
                    .unwrap();
                let c = small(preset, 6)
                    .write(dirs[2].path(), format, &mut |_| {})
                    .unwrap();
                let files = |d: &DetectDataset| -> Vec<PathBuf> {
                    d.train
                        .iter()
                        .chain(&d.val)
                        .map(|i| i.path.clone())
                        .collect()
                };
                for ((x, y), z) in files(&a).iter().zip(files(&b)).zip(files(&c)) {
                    let bytes = |p: &Path| std::fs::read(p).unwrap();
                    assert_eq!(bytes(x), bytes(&y), "{preset} {format}");
                    assert_ne!(bytes(x), bytes(&z), "{preset} {format}");
                }
                // The annotations too.
                let ann = |d: &Path| match format {
                    Format::Yolo => std::fs::read(d.join("labels/train/000002.txt")).unwrap(),
                    Format::Coco => std::fs::read(d.join("val/annotations.json")).unwrap(),
                    Format::Voc => std::fs::read(d.join("Annotations/train_000002.xml")).unwrap(),
                };
                assert_eq!(ann(dirs[0].path()), ann(dirs[1].path()));
                // Picture i does not depend on the set size; validation differs from training.
                let more = SynthDetect {
                    count: 9,
                    ..small(preset, 5)
                };
                assert_eq!(more.render(2).0, small(preset, 5).render(2).0);
                assert_eq!(more.render_val(1), small(preset, 5).render_val(1));
                assert_ne!(more.render(0).0, more.render_val(0).0);
            }
        }
    }

    #[test]
    fn written_sets_load_back_with_their_splits() {
        for format in [Format::Yolo, Format::Coco] {
            let d = tempfile::tempdir().unwrap();
            let s = SynthDetect {
                width: 96,
                height: 64,
                count: 4,
                val_count: 2,
                seed: 1,
                preset: Preset::Multi,
            };
            let written = s.write(d.path(), format, &mut |_| {}).unwrap();
            let loaded = annotations::load(d.path(), true).unwrap();
            assert_eq!(loaded.format, format);
            assert_eq!(loaded.labels, MULTI_CLASSES);
            assert_eq!((loaded.train.len(), loaded.val.len()), (4, 2));
            for (x, y) in written
                .train
                .iter()
                .chain(&written.val)
                .zip(loaded.train.iter().chain(&loaded.val))
            {
                assert_eq!(x.path.file_name(), y.path.file_name());
                assert_eq!((y.width, y.height), (96, 64));
                assert_eq!(x.objects.len(), y.objects.len());
                for (o, p) in x.objects.iter().zip(&y.objects) {
                    assert_eq!(o.class, p.class);
                    let (o, p): ([f32; 4], [f32; 4]) = (o.bbox.into(), p.bbox.into());
                    assert!(
                        o.iter().zip(&p).all(|(u, v)| (u - v).abs() < 1e-3),
                        "{o:?} {p:?}"
                    );
                }
            }
            let rendered = s.render(3).1;
            assert!(!rendered.is_empty());
            assert_eq!(rendered, written.train[3].objects);
            // A second write into the same place is refused rather than mixed with the first.
            assert!(matches!(
                s.write(d.path(), format, &mut |_| {}),
                Err(SceneError::NotEmpty(_))
            ));
        }
        let tiny = SynthDetect {
            width: 100,
            ..SynthDetect::new(Preset::Book)
        };
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            tiny.write(d.path(), Format::Yolo, &mut |_| {}),
            Err(SceneError::TooSmall { min: 112, .. })
        ));
        assert_eq!("Multi".parse::<Preset>().unwrap(), Preset::Multi);
        assert!("books".parse::<Preset>().is_err());
    }

    /// The book's target: one per picture, fully inside, sized as stated, labelled right, and a box
    /// that is tight to it (checked on the pixels, not on the drawing code).
    #[test]
    fn book_targets_match_the_book() {
        let s = SynthDetect::new(Preset::Book);
        let mut seen = [0usize; 2];
        for i in 0..60 {
            let (img, objects) = s.render(i);
            assert_eq!(objects.len(), 1);
            let o = objects[0];
            assert!(inside_frame(&o.bbox, 224, 224), "{o:?}");
            let (bw, bh) = (o.bbox.width(), o.bbox.height());
            seen[o.class] += 1;
            if o.class == 0 {
                // Sides 40-100, to a pixel.
                assert!(
                    (39.0..=101.0).contains(&bw) && (39.0..=101.0).contains(&bh),
                    "{o:?}"
                );
            } else {
                // An equilateral triangle of side s rotated any way spans s*sqrt(3)/2 to s on
                // both axes, so the box is nearly square.
                let lo = 50.0 * 3f32.sqrt() / 2.0 - 1.5;
                assert!(
                    (lo..=101.0).contains(&bw) && (lo..=101.0).contains(&bh),
                    "{o:?}"
                );
                assert!((bw / bh) > 0.84 && (bw / bh) < 1.19, "{o:?}");
            }
            // The box centre lies inside either target (a triangle's incircle reaches it).
            let (cx, cy) = o.bbox.center();
            let c = *img.get_pixel(cx as u32, cy as u32);
            let (x0, y0, x1, y1) = (
                o.bbox.x0 as u32,
                o.bbox.y0 as u32,
                o.bbox.x1 as u32,
                o.bbox.y1 as u32,
            );
            let col = |x: u32| (y0..y1).filter(|&y| *img.get_pixel(x, y) == c).count();
            let row = |y: u32| (x0..x1).filter(|&x| *img.get_pixel(x, y) == c).count();
            // Every edge of the box touches the target; just outside, nothing of it.
            assert!(
                col(x0) > 0 && col(x1 - 1) > 0 && row(y0) > 0 && row(y1 - 1) > 0,
                "{i}: {o:?}"
            );
            assert!(x0 == 0 || col(x0 - 1) == 0, "{i}");
            assert!(x1 == 224 || col(x1) == 0, "{i}");
            assert!(y0 == 0 || row(y0 - 1) == 0, "{i}");
            assert!(y1 == 224 || row(y1) == 0, "{i}");
            // Rectangles fill their box, triangles about half of it.
            let filled: usize = (x0..x1).map(col).sum();
            let fill = filled as f32 / (bw * bh);
            if o.class == 0 {
                assert!(fill > 0.97, "{i}: rectangle fills {fill}");
            } else {
                assert!((0.35..0.55).contains(&fill), "{i}: triangle fills {fill}");
            }
            // The rest of the picture: the white background and the distractors.
            let white = img.pixels().filter(|p| p.0 == [255; 3]).count();
            assert!(white > 224 * 224 / 3, "{i}");
        }
        assert!(seen[0] > 15 && seen[1] > 15, "{seen:?}");
    }

    /// Multi boxes are exactly the pixels an object changes: drawing the scene without it must
    /// differ from the full picture only inside its box, and on every edge of the box.
    #[test]
    fn multi_boxes_are_tight_to_the_visible_pixels() {
        let s = SynthDetect::new(Preset::Multi);
        let mut checked = 0;
        let mut dropped = 0;
        for i in 0..40 {
            let scene = s.scene(0, i);
            let (full, objects) = scene.compose(&|_| true);
            assert_eq!(full, s.render(i).0);
            let annotated: Vec<usize> = (0..scene.layers.len())
                .filter(|&k| scene.layers[k].class.is_some())
                .collect();
            for &k in &annotated {
                let (without, _) = scene.compose(&|j| j != k);
                let (alone, _) = scene.compose(&|j| j == k || scene.layers[j].class.is_none());
                let (bare, _) = scene.compose(&|j| scene.layers[j].class.is_none());
                let diff = |a: &RgbImage, b: &RgbImage| -> Vec<(u32, u32)> {
                    a.enumerate_pixels()
                        .filter(|(x, y, p)| *p != b.get_pixel(*x, *y))
                        .map(|(x, y, _)| (x, y))
                        .collect()
                };
                let seen = diff(&full, &without);
                let whole = diff(&alone, &bare);
                match objects.iter().find(|(j, _)| *j == k) {
                    Some((_, o)) => {
                        checked += 1;
                        assert!(inside_frame(&o.bbox, 320, 240));
                        let xs = seen.iter().map(|p| p.0);
                        let ys = seen.iter().map(|p| p.1);
                        let b = BBox::new(
                            xs.clone().min().unwrap() as f32,
                            ys.clone().min().unwrap() as f32,
                            xs.max().unwrap() as f32 + 1.0,
                            ys.max().unwrap() as f32 + 1.0,
                        );
                        let (ob, bb): ([f32; 4], [f32; 4]) = (o.bbox.into(), b.into());
                        assert!(
                            ob.iter().zip(&bb).all(|(u, v)| (u - v).abs() <= 1.0),
                            "{i}/{k}: {ob:?} vs pixels {bb:?}"
                        );
                        // At least 40% of what it shows on its own is still seen.
                        assert!(seen.len() as f32 >= 0.39 * whole.len() as f32, "{i}/{k}");
                    }
                    None => {
                        dropped += 1;
                        // Hidden by later objects, or cut by the frame edge.
                        let (x0, y0, x1, y1) = scene.layers[k].geom.bounds();
                        let cut = x0 < 0.0 || y0 < 0.0 || x1 > 320.0 || y1 > 240.0;
                        assert!(
                            cut || (seen.len() as f32) < 0.41 * whole.len() as f32,
                            "{i}/{k}"
                        );
                    }
                }
            }
        }
        assert!(checked > 50, "{checked}");
        assert!(dropped > 0, "no object was ever hidden enough to drop");
    }

    #[test]
    fn multi_has_every_class_and_a_wide_scale_range() {
        let s = SynthDetect {
            width: 320,
            height: 240,
            ..SynthDetect::new(Preset::Multi)
        };
        let mut per_class = [0usize; 5];
        let mut sizes = Vec::new();
        let mut counts = [0usize; 7];
        for i in 0..200 {
            let (img, objects) = s.render(i);
            assert_eq!(img.dimensions(), (320, 240));
            assert!(objects.len() <= 6);
            counts[objects.len()] += 1;
            for o in &objects {
                assert!(inside_frame(&o.bbox, 320, 240), "{o:?}");
                per_class[o.class] += 1;
                sizes.push(o.bbox.width().max(o.bbox.height()));
            }
        }
        assert!(
            per_class.iter().filter(|&&n| n > 0).count() >= 4,
            "{per_class:?}"
        );
        assert!(per_class.iter().all(|&n| n > 20), "{per_class:?}");
        let (lo, hi) = sizes
            .iter()
            .fold((f32::MAX, 0f32), |(a, b), &s| (a.min(s), b.max(s)));
        assert!(hi / lo >= 4.0, "sizes {lo}..{hi}");
        assert!(hi >= 80.0 && lo <= 16.0, "sizes {lo}..{hi}");
        assert!(counts[0] > 0 && counts[5] + counts[6] > 0, "{counts:?}");
        // Any frame size, boxes still inside.
        let odd = SynthDetect {
            width: 97,
            height: 301,
            ..s
        };
        for i in 0..10 {
            let (img, objects) = odd.render(i);
            assert_eq!(img.dimensions(), (97, 301));
            assert!(objects.iter().all(|o| inside_frame(&o.bbox, 97, 301)));
        }
    }

    #[test]
    fn multi_backgrounds_and_light_vary() {
        // Mean brightness and texture (mean absolute step between neighbours) over pictures.
        let s = SynthDetect::new(Preset::Multi);
        let (mut means, mut textures) = (Vec::new(), Vec::new());
        for i in 0..30 {
            let (img, _) = s.render(i);
            let lum: Vec<f32> = img
                .pixels()
                .map(|p| p.0.iter().map(|&v| v as f32).sum::<f32>() / 3.0)
                .collect();
            means.push(lum.iter().sum::<f32>() / lum.len() as f32);
            let steps: f32 = lum.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
            textures.push(steps / lum.len() as f32);
        }
        let lo_hi = |v: &[f32]| {
            v.iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)))
        };
        let (dark, bright) = lo_hi(&means);
        assert!(bright - dark > 60.0, "{means:?}");
        // Flat pictures and busy ones.
        let (flat, busy) = lo_hi(&textures);
        assert!(busy > 4.0 * flat && busy > 3.0, "{textures:?}");
    }
}
