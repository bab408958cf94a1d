//! Synthetic labelled pictures, so tests and the demo need no downloads.
//!
//! `kestrel synth classify` draws one shape per picture (circle, cross, square or triangle; any
//! size, position, rotation and colour) on a varied background (solid, gradient, noise, stripes),
//! with a few thin distractor lines, and writes the ImageFolder layout `OUT/<shape>/<shape>_NNNN.png`.
//! The same seed always gives the same pictures, byte for byte.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Classes of the synthetic classification set, in label order.
pub const SHAPES: [&str; 4] = ["circle", "cross", "square", "triangle"];

/// Settings of a synthetic classification set.
#[derive(Debug, Clone)]
pub struct SynthClassify {
    /// Pictures per class.
    pub per_class: usize,
    /// Side of the square pictures, pixels.
    pub size: u32,
    /// Seed; the set is a pure function of the settings.
    pub seed: u64,
}

impl Default for SynthClassify {
    fn default() -> Self {
        SynthClassify {
            per_class: 60,
            size: 128,
            seed: 0,
        }
    }
}

fn color(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [rng.random(), rng.random(), rng.random()].map(|v: f32| v * 255.0)
}

fn luminance(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// A background: a colour for every pixel, and its mean colour.
fn background(rng: &mut ChaCha8Rng, size: u32) -> (Vec<[f32; 3]>, [f32; 3]) {
    let n = (size * size) as usize;
    let a = color(rng);
    let b = color(rng);
    let angle = rng.random::<f32>() * PI;
    let (ca, sa) = (angle.cos(), angle.sin());
    let kind = rng.random_range(0..4);
    let period = rng.random_range(6.0..24.0f32);
    let mut px = Vec::with_capacity(n);
    for y in 0..size {
        for x in 0..size {
            let t = (x as f32 * ca + y as f32 * sa) / size as f32;
            let c = match kind {
                0 => a,
                1 => std::array::from_fn(|i| a[i] + (b[i] - a[i]) * t.clamp(0.0, 1.0)),
                2 => {
                    let noise = rng.random_range(-40.0..40.0f32);
                    a.map(|v| v + noise)
                }
                _ => {
                    if ((t * size as f32 / period) as i32) % 2 == 0 {
                        a
                    } else {
                        b
                    }
                }
            };
            px.push(c);
        }
    }
    let mean = std::array::from_fn(|i| px.iter().map(|p| p[i]).sum::<f32>() / n as f32);
    (px, mean)
}

/// Whether a point in the shape's own frame (centre at 0, unrotated) lies inside it.
fn inside(shape: usize, x: f32, y: f32, r: f32) -> bool {
    match SHAPES[shape] {
        "circle" => x * x + y * y <= r * r,
        "square" => x.abs() <= 0.8 * r && y.abs() <= 0.8 * r,
        "cross" => {
            let w = 0.3 * r;
            (x.abs() <= r && y.abs() <= w) || (x.abs() <= w && y.abs() <= r)
        }
        _ => {
            // Equilateral triangle with circumradius r: inside all three edges (inradius r/2).
            [-PI / 2.0, PI / 6.0, 5.0 * PI / 6.0]
                .iter()
                .all(|a| x * a.cos() + y * a.sin() <= r / 2.0)
        }
    }
}

/// Draw one picture of class `shape`.
pub fn draw(rng: &mut ChaCha8Rng, shape: usize, size: u32) -> RgbImage {
    let (mut px, mean) = background(rng, size);
    let s = size as f32;
    // A shape colour that stands out from the background.
    let mut fg = color(rng);
    for _ in 0..20 {
        if (luminance(fg) - luminance(mean)).abs() > 60.0 {
            break;
        }
        fg = color(rng);
    }
    let r = rng.random_range(0.18..0.38) * s;
    let cx = rng.random_range(r..s - r);
    let cy = rng.random_range(r..s - r);
    let theta = rng.random::<f32>() * 2.0 * PI;
    let (ct, st) = (theta.cos(), theta.sin());
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let (lx, ly) = (dx * ct + dy * st, -dx * st + dy * ct);
            if inside(shape, lx, ly, r) {
                px[(y * size + x) as usize] = fg;
            }
        }
    }
    // Thin distractor lines across the picture.
    for _ in 0..rng.random_range(0..3) {
        let c = color(rng);
        let (x0, y0, x1, y1) = (
            rng.random::<f32>() * s,
            rng.random::<f32>() * s,
            rng.random::<f32>() * s,
            rng.random::<f32>() * s,
        );
        let steps = (s * 1.5) as usize;
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            let (x, y) = ((x0 + (x1 - x0) * t) as u32, (y0 + (y1 - y0) * t) as u32);
            if x < size && y < size {
                px[(y * size + x) as usize] = c;
            }
        }
    }
    RgbImage::from_fn(size, size, |x, y| {
        Rgb(px[(y * size + x) as usize].map(|v| v.clamp(0.0, 255.0).round() as u8))
    })
}

/// Write the set under `out` (`out/<shape>/<shape>_NNNN.png`) and return the files written.
pub fn write_classify(opts: &SynthClassify, out: &Path) -> Result<Vec<PathBuf>, image::ImageError> {
    let mut files = Vec::with_capacity(opts.per_class * SHAPES.len());
    for (k, name) in SHAPES.iter().enumerate() {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        // One stream per class, so adding pictures to one class leaves the others unchanged.
        let mut rng =
            ChaCha8Rng::seed_from_u64(opts.seed.wrapping_mul(1_000_003).wrapping_add(k as u64));
        for i in 0..opts.per_class {
            let p = dir.join(format!("{name}_{i:04}.png"));
            draw(&mut rng, k, opts.size).save(&p)?;
            files.push(p);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    #[test]
    fn writes_an_image_folder_that_scans_back() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthClassify {
            per_class: 5,
            size: 48,
            seed: 3,
        };
        let files = write_classify(&opts, dir.path()).unwrap();
        assert_eq!(files.len(), 20);
        let d = Dataset::scan(dir.path(), 0.2, 0).unwrap();
        assert_eq!(d.labels, SHAPES);
        assert_eq!(d.counts(&d.train), vec![4; 4]);
        let img = image::open(&files[0]).unwrap();
        assert_eq!((img.width(), img.height()), (48, 48));
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_pictures() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        let opts = SynthClassify {
            per_class: 2,
            size: 32,
            seed: 11,
        };
        let fa = write_classify(&opts, a.path()).unwrap();
        let fb = write_classify(&opts, b.path()).unwrap();
        let fc = write_classify(&SynthClassify { seed: 12, ..opts }, c.path()).unwrap();
        for ((x, y), z) in fa.iter().zip(&fb).zip(&fc) {
            assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
            assert_ne!(std::fs::read(x).unwrap(), std::fs::read(z).unwrap());
        }
    }

    #[test]
    fn shapes_are_what_they_claim() {
        // Geometry of each class at radius 10: the centre is inside, a far corner is not, and the
        // classes differ where they should.
        for (k, name) in SHAPES.iter().enumerate() {
            assert!(inside(k, 0.0, 0.0, 10.0), "{name}");
            assert!(!inside(k, 9.9, 9.9, 10.0), "{name}");
        }
        let circle = 0;
        let cross = 1;
        let square = 2;
        let triangle = 3;
        assert!(inside(square, 7.5, 7.5, 10.0) && !inside(circle, 7.5, 7.5, 10.0));
        assert!(inside(cross, 9.5, 0.0, 10.0) && !inside(cross, 5.0, 5.0, 10.0));
        // Vertex towards +y, flat edge at y = -r/2.
        assert!(inside(triangle, 0.0, 9.0, 10.0) && !inside(triangle, 0.0, -6.0, 10.0));
    }
}
