//! Seeded augmentation for small datasets: random resized crop, horizontal flip, colour jitter.
//!
//! A view is a pure function of the picture's content hash, the view number and the recipe
//! version, so an augmented view's embedding can be cached like the picture's own: a second run
//! reuses every view instead of running the trunk again.

use image::{Rgb, RgbImage, imageops};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Version of the augmentation recipe; part of every augmented view's cache key.
pub const RECIPE: u32 = 1;

fn view_rng(content_sha: &str, view: u32) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(content_sha.as_bytes());
    h.update(view.to_le_bytes());
    h.update(RECIPE.to_le_bytes());
    let d = h.finalize();
    ChaCha8Rng::from_seed(d.into())
}

/// View `view` (>= 1) of a picture: crop 60-100% of the area at aspect 3:4 to 4:3, flip half the
/// time, and jitter brightness, contrast and saturation by up to 30%.
pub fn augment(img: &RgbImage, content_sha: &str, view: u32) -> RgbImage {
    let mut rng = view_rng(content_sha, view);
    let (w, h) = img.dimensions();
    let area = (w * h) as f64 * rng.random_range(0.6..1.0);
    let aspect = rng.random_range((0.75f64).ln()..(4.0f64 / 3.0).ln()).exp();
    let cw = ((area * aspect).sqrt().round() as u32).clamp(1, w);
    let ch = ((area / aspect).sqrt().round() as u32).clamp(1, h);
    let x = rng.random_range(0..=w - cw);
    let y = rng.random_range(0..=h - ch);
    let mut out = imageops::crop_imm(img, x, y, cw, ch).to_image();
    if rng.random_bool(0.5) {
        imageops::flip_horizontal_in_place(&mut out);
    }
    let brightness = rng.random_range(0.7..1.3f32);
    let contrast = rng.random_range(0.7..1.3f32);
    let saturation = rng.random_range(0.7..1.3f32);
    let n = (out.width() * out.height()) as f32;
    let mean = out
        .pixels()
        .map(|p| 0.299 * p.0[0] as f32 + 0.587 * p.0[1] as f32 + 0.114 * p.0[2] as f32)
        .sum::<f32>()
        / n.max(1.0);
    for p in out.pixels_mut() {
        let c = p.0.map(|v| v as f32 * brightness);
        let grey = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        let c = c.map(|v| grey + (v - grey) * saturation);
        let c = c.map(|v| mean * brightness + (v - mean * brightness) * contrast);
        *p = Rgb(c.map(|v| v.clamp(0.0, 255.0).round() as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture() -> RgbImage {
        RgbImage::from_fn(80, 60, |x, y| Rgb([(x * 3) as u8, (y * 4) as u8, 100]))
    }

    #[test]
    fn views_are_deterministic_and_distinct() {
        let img = picture();
        let a = augment(&img, "abc", 1);
        assert_eq!(a, augment(&img, "abc", 1));
        assert_ne!(a, augment(&img, "abc", 2));
        assert_ne!(a, augment(&img, "abd", 1));
        // A crop keeps at least 60% of the area (up to rounding) and never exceeds the picture.
        for v in 1..20 {
            let (w, h) = augment(&img, "abc", v).dimensions();
            assert!(w <= 80 && h <= 60);
            assert!((w * h) as f64 >= 0.5 * 80.0 * 60.0, "view {v}: {w}x{h}");
        }
    }

    #[test]
    fn tiny_pictures_survive() {
        let img = RgbImage::from_pixel(1, 1, Rgb([10, 20, 30]));
        for v in 1..10 {
            assert_eq!(augment(&img, "x", v).dimensions(), (1, 1));
        }
    }
}
