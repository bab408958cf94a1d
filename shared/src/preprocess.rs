//! How a picture becomes the input tensor: one implementation, used by the trainer and the board.
//!
//! The spec is data (it is written into every exported model's description), and [`PreprocessSpec::apply`]
//! is the only code that turns pixels into floats, so training sees exactly what the board computes.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

/// Version of the pixel code in this module: caches of anything computed from preprocessed
/// pictures (the trainer's embeddings) include it, so a change here never reuses stale entries.
/// 2: SIMD bilinear resize. 3: picture files read with their EXIF orientation applied
/// ([`crate::picture`]), so a phone photo cached sideways is embedded again.
pub const PREPROCESS_VERSION: u32 = 3;

/// How a frame of any size is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResizeMode {
    /// ImageNet evaluation: resize so the shorter side is `shorter` (bilinear), then centre-crop.
    ShorterSideCrop {
        /// Length of the shorter side after resizing (256 for ImageNet's 224 crop).
        shorter: u32,
    },
    /// Resize to the input size, ignoring the aspect ratio.
    Stretch,
    /// Fit inside the input size keeping the aspect ratio, pad the rest with `pad` (RGB).
    Letterbox {
        /// Padding colour.
        pad: [u8; 3],
    },
    /// Crop the largest centred region with the input's aspect ratio, then resize.
    CenterCrop,
}

/// Per-channel normalisation applied after scaling pixels to [0, 1]: `(x - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel means, RGB order.
    pub mean: [f32; 3],
    /// Channel standard deviations, RGB order.
    pub std: [f32; 3],
}

impl Normalization {
    /// torchvision's ImageNet statistics.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

/// Everything needed to turn a picture into the model's input tensor (NCHW, RGB, float32).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreprocessSpec {
    /// Input height in pixels.
    pub height: u32,
    /// Input width in pixels.
    pub width: u32,
    /// How frames of other sizes are brought to `height` x `width`.
    pub resize: ResizeMode,
    /// Normalisation after scaling to [0, 1].
    pub normalization: Normalization,
}

/// A picture that could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The file could not be read.
    #[error("cannot read image {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not an image Kestrel can decode.
    #[error(
        "cannot decode image {path}: {source} (supported: PNG, JPEG, WebP, BMP; is the file complete?)"
    )]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        source: image::ImageError,
    },
    /// The image has no pixels.
    #[error("image {path} is empty (0 pixels)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl Default for PreprocessSpec {
    fn default() -> Self {
        Self::imagenet()
    }
}

impl PreprocessSpec {
    /// torchvision's ImageNet evaluation transform: shorter side 256, centre crop 224, ImageNet stats.
    pub fn imagenet() -> Self {
        PreprocessSpec {
            height: 224,
            width: 224,
            resize: ResizeMode::ShorterSideCrop { shorter: 256 },
            normalization: Normalization::IMAGENET,
        }
    }

    /// Number of floats in one preprocessed image (3 x H x W).
    pub fn len(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }

    /// Always false: a spec describes at least one pixel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Input tensor shape for a batch of `n` images.
    pub fn input_shape(&self, n: usize) -> [usize; 4] {
        [n, 3, self.height as usize, self.width as usize]
    }

    /// Read and decode an image file (any size, any supported format) as displayed (its EXIF
    /// orientation applied, see [`crate::picture`]), reporting the path on failure.
    pub fn load(path: &Path) -> Result<RgbImage, PreprocessError> {
        crate::picture::open(path)
    }

    /// Load a file and preprocess it: CHW floats, ready to be one item of a batch.
    pub fn load_and_apply(&self, path: &Path) -> Result<Vec<f32>, PreprocessError> {
        Ok(self.apply(&Self::load(path)?))
    }

    /// Preprocess decoded pixels into CHW floats (length [`Self::len`]).
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let resized = self.resize(img);
        self.normalize(&resized)
    }

    /// Preprocess any decoded image (converted to RGB first).
    pub fn apply_dynamic(&self, img: &DynamicImage) -> Vec<f32> {
        self.apply(&img.to_rgb8())
    }

    /// Bring an image to exactly `width` x `height` according to [`ResizeMode`].
    pub fn resize(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = (self.width, self.height);
        let (iw, ih) = img.dimensions();
        match self.resize {
            ResizeMode::Stretch => resize_exact(img, w, h),
            ResizeMode::ShorterSideCrop { shorter } => {
                // torchvision's Resize(int): the shorter side becomes `shorter`, the longer side
                // shorter * long / short, rounded (checked against torchvision 0.29's output for a
                // 451x300 photo: 385, not 384).
                let long = |l: u32, s: u32| (shorter as f64 * l as f64 / s as f64).round() as u32;
                let (rw, rh) = if iw <= ih {
                    (shorter, long(ih, iw))
                } else {
                    (long(iw, ih), shorter)
                };
                let resized = resize_exact(img, rw.max(1), rh.max(1));
                center_crop(&resized, w, h)
            }
            ResizeMode::CenterCrop => {
                // Largest centred region with the target aspect ratio.
                let (cw, ch) = if iw as u64 * h as u64 > ih as u64 * w as u64 {
                    (((ih as u64 * w as u64) / h as u64).max(1) as u32, ih)
                } else {
                    (iw, ((iw as u64 * h as u64) / w as u64).max(1) as u32)
                };
                let cropped = center_crop(img, cw, ch);
                resize_exact(&cropped, w, h)
            }
            ResizeMode::Letterbox { pad } => {
                let scale = (w as f64 / iw as f64).min(h as f64 / ih as f64);
                let nw = ((iw as f64 * scale).round() as u32).clamp(1, w);
                let nh = ((ih as f64 * scale).round() as u32).clamp(1, h);
                let resized = resize_exact(img, nw, nh);
                let mut canvas = RgbImage::from_pixel(w, h, image::Rgb(pad));
                imageops::replace(
                    &mut canvas,
                    &resized,
                    ((w - nw) / 2) as i64,
                    ((h - nh) / 2) as i64,
                );
                canvas
            }
        }
    }

    /// Scale an image of exactly the input size to [0, 1], normalise, and lay it out as CHW.
    pub fn normalize(&self, img: &RgbImage) -> Vec<f32> {
        assert_eq!(img.dimensions(), (self.width, self.height));
        let plane = (self.width * self.height) as usize;
        let mut out = vec![0f32; 3 * plane];
        let Normalization { mean, std } = self.normalization;
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| mean[c] / std[c]);
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = px.0[c] as f32 * scale[c] - shift[c];
            }
        }
        out
    }
}

/// Where the model's input pixels lie in the original frame: `frame = input * scale + offset`
/// per axis, the inverse of [`PreprocessSpec::resize`] (so boxes found on the input go back to
/// frame pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameMapping {
    /// Frame pixels per input pixel, x and y.
    pub scale: [f32; 2],
    /// Frame position of input pixel 0, x and y.
    pub offset: [f32; 2],
}

impl FrameMapping {
    /// Map a box in input pixels to frame pixels.
    pub fn to_frame(&self, b: crate::BBox) -> crate::BBox {
        let [sx, sy] = self.scale;
        let [ox, oy] = self.offset;
        crate::BBox::new(
            b.x0 * sx + ox,
            b.y0 * sy + oy,
            b.x1 * sx + ox,
            b.y1 * sy + oy,
        )
    }
}

impl PreprocessSpec {
    /// The mapping from input pixels back to a `frame_w` x `frame_h` frame for this spec's resize.
    pub fn frame_mapping(&self, frame_w: u32, frame_h: u32) -> FrameMapping {
        let (w, h) = (self.width as f64, self.height as f64);
        let (iw, ih) = (frame_w as f64, frame_h as f64);
        let m = |sx: f64, sy: f64, ox: f64, oy: f64| FrameMapping {
            scale: [sx as f32, sy as f32],
            offset: [ox as f32, oy as f32],
        };
        match self.resize {
            ResizeMode::Stretch => m(iw / w, ih / h, 0.0, 0.0),
            ResizeMode::Letterbox { .. } => {
                let scale = (w / iw).min(h / ih);
                let nw = ((iw * scale).round()).clamp(1.0, w);
                let nh = ((ih * scale).round()).clamp(1.0, h);
                let (px, py) = (((w - nw) / 2.0).floor(), ((h - nh) / 2.0).floor());
                let (sx, sy) = (iw / nw, ih / nh);
                m(sx, sy, -px * sx, -py * sy)
            }
            ResizeMode::CenterCrop => {
                let (cw, ch) = if frame_w as u64 * self.height as u64
                    > frame_h as u64 * self.width as u64
                {
                    (
                        ((frame_h as u64 * self.width as u64) / self.height as u64).max(1) as f64,
                        ih,
                    )
                } else {
                    (
                        iw,
                        ((frame_w as u64 * self.height as u64) / self.width as u64).max(1) as f64,
                    )
                };
                let left = ((iw - cw) / 2.0).round_ties_even();
                let top = ((ih - ch) / 2.0).round_ties_even();
                m(cw / w, ch / h, left, top)
            }
            ResizeMode::ShorterSideCrop { shorter } => {
                let s = shorter as f64;
                let (rw, rh) = if frame_w <= frame_h {
                    (s, (s * ih / iw).round())
                } else {
                    ((s * iw / ih).round(), s)
                };
                let left = ((rw - w).max(0.0) / 2.0).round_ties_even();
                let top = ((rh - h).max(0.0) / 2.0).round_ties_even();
                let (sx, sy) = (iw / rw, ih / rh);
                m(sx, sy, left * sx, top * sy)
            }
        }
    }
}

/// Bilinear (triangle) resampling, antialiased when shrinking, like PIL's and image's `Triangle`
/// filter; done with SIMD kernels (fast_image_resize): a 640x480 camera frame to 320x240 takes
/// about 1 ms instead of 10 with `image::imageops::resize`, which stays as the fallback.
fn resize_exact(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    use fast_image_resize as fir;
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    let (iw, ih) = img.dimensions();
    let fast = || -> Option<RgbImage> {
        let src = fir::images::ImageRef::new(iw, ih, img.as_raw(), fir::PixelType::U8x3).ok()?;
        let mut dst = fir::images::Image::new(w, h, fir::PixelType::U8x3);
        let opts = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
        fir::Resizer::new().resize(&src, &mut dst, &opts).ok()?;
        RgbImage::from_raw(w, h, dst.into_vec())
    };
    fast().unwrap_or_else(|| imageops::resize(img, w, h, FilterType::Triangle))
}

/// torchvision's CenterCrop: offsets rounded half-to-even (Python's `round`), image padded with black if smaller than the crop.
fn center_crop(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    if iw < w || ih < h {
        let mut canvas = RgbImage::new(w.max(iw), h.max(ih));
        imageops::replace(
            &mut canvas,
            img,
            ((w.max(iw) - iw) / 2) as i64,
            ((h.max(ih) - ih) / 2) as i64,
        );
        return center_crop(&canvas, w, h);
    }
    let left = ((iw - w) as f64 / 2.0).round_ties_even() as u32;
    let top = ((ih - h) as f64 / 2.0).round_ties_even() as u32;
    imageops::crop_imm(img, left, top, w, h).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A white square drawn on a frame must come back, through resize and the inverse mapping,
    /// where it was: the centre of the bright region in the model input, mapped to the frame.
    #[test]
    fn frame_mapping_inverts_every_resize_mode() {
        let (fw, fh) = (320u32, 240u32);
        let (x0, y0, x1, y1) = (200u32, 60u32, 260u32, 120u32);
        let frame = RgbImage::from_fn(fw, fh, |x, y| {
            if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        for resize in [
            ResizeMode::Stretch,
            ResizeMode::Letterbox { pad: [0, 0, 0] },
            ResizeMode::CenterCrop,
            ResizeMode::ShorterSideCrop { shorter: 256 },
        ] {
            let spec = PreprocessSpec {
                height: 224,
                width: 224,
                resize,
                normalization: Normalization::IMAGENET,
            };
            let input = spec.resize(&frame);
            let (mut bx0, mut by0, mut bx1, mut by1) = (u32::MAX, u32::MAX, 0, 0);
            for (x, y, p) in input.enumerate_pixels() {
                if p.0[0] > 127 {
                    bx0 = bx0.min(x);
                    by0 = by0.min(y);
                    bx1 = bx1.max(x + 1);
                    by1 = by1.max(y + 1);
                }
            }
            let b = spec.frame_mapping(fw, fh).to_frame(crate::BBox::new(
                bx0 as f32, by0 as f32, bx1 as f32, by1 as f32,
            ));
            for (got, want) in [(b.x0, x0), (b.y0, y0), (b.x1, x1), (b.y1, y1)] {
                assert!(
                    (got - want as f32).abs() <= 2.0,
                    "{resize:?}: {b:?} vs [{x0}, {y0}, {x1}, {y1}]"
                );
            }
        }
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128])
        })
    }

    #[test]
    fn every_mode_gives_the_input_size_from_any_size() {
        for resize in [
            ResizeMode::ShorterSideCrop { shorter: 256 },
            ResizeMode::Stretch,
            ResizeMode::Letterbox { pad: [0, 0, 0] },
            ResizeMode::CenterCrop,
        ] {
            let spec = PreprocessSpec {
                resize,
                ..PreprocessSpec::imagenet()
            };
            for (w, h) in [(8, 8), (1, 500), (640, 480), (224, 224), (300, 100)] {
                let out = spec.apply(&gradient(w, h));
                assert_eq!(out.len(), 3 * 224 * 224, "{resize:?} {w}x{h}");
                assert!(out.iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn normalisation_is_imagenet_chw() {
        let spec = PreprocessSpec {
            height: 2,
            width: 2,
            resize: ResizeMode::Stretch,
            normalization: Normalization::IMAGENET,
        };
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb([255, 0, (x + 2 * y) as u8 * 50]));
        let out = spec.apply(&img);
        // Red plane first, all 255.
        let red = (1.0 - 0.485) / 0.229;
        assert!((out[0] - red).abs() < 1e-5 && (out[3] - red).abs() < 1e-5);
        // Green plane all 0.
        assert!((out[4] - (-0.456 / 0.224)).abs() < 1e-5);
        // Blue plane follows row-major pixel order.
        let blue = |v: f32| (v / 255.0 - 0.406) / 0.225;
        assert!((out[8 + 3] - blue(150.0)).abs() < 1e-5);
        assert!((out[8 + 1] - blue(50.0)).abs() < 1e-5);
    }

    #[test]
    fn shorter_side_crop_matches_torchvision_geometry() {
        // A 640x480 image whose left and right quarters are red: after resize to 341x256 and a
        // centred 224 crop, the crop starts at column round((341-224)/2) of the resized image,
        // so it sees only the middle part, which is blue (offset round(58.5) = 58, as Python rounds).
        let img = RgbImage::from_fn(640, 480, |x, _| {
            if (160..480).contains(&x) {
                image::Rgb([0, 0, 255])
            } else {
                image::Rgb([255, 0, 0])
            }
        });
        let spec = PreprocessSpec::imagenet();
        let r = spec.resize(&img);
        assert_eq!(r.dimensions(), (224, 224));
        // Resized middle region spans columns 85..256; the crop covers 58..282, so its edges are red
        // and its centre blue.
        assert_eq!(r.get_pixel(112, 112).0, [0, 0, 255]);
        assert_eq!(r.get_pixel(0, 112).0, [255, 0, 0]);
        assert_eq!(r.get_pixel(223, 112).0, [255, 0, 0]);
    }

    #[test]
    fn letterbox_pads_and_keeps_aspect() {
        let spec = PreprocessSpec {
            height: 100,
            width: 100,
            resize: ResizeMode::Letterbox { pad: [7, 7, 7] },
            normalization: Normalization::IMAGENET,
        };
        let img = RgbImage::from_pixel(200, 100, image::Rgb([200, 200, 200]));
        let r = spec.resize(&img);
        assert_eq!(r.get_pixel(50, 10).0, [7, 7, 7]);
        assert_eq!(r.get_pixel(50, 50).0, [200, 200, 200]);
        assert_eq!(r.get_pixel(50, 90).0, [7, 7, 7]);
    }

    #[test]
    fn corrupt_and_missing_files_name_the_path() {
        let dir = std::env::temp_dir().join(format!("kestrel-pre-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("broken.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
        let err = PreprocessSpec::load(&bad).unwrap_err();
        assert!(matches!(err, PreprocessError::Decode { .. }));
        assert!(err.to_string().contains("broken.png"));
        let missing = dir.join("nope.jpg");
        let err = PreprocessSpec::load(&missing).unwrap_err();
        assert!(matches!(err, PreprocessError::Read { .. }));
        assert!(err.to_string().contains("nope.jpg"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = PreprocessSpec {
            resize: ResizeMode::Letterbox {
                pad: [114, 114, 114],
            },
            ..PreprocessSpec::imagenet()
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<PreprocessSpec>(&json).unwrap(), spec);
    }
}
