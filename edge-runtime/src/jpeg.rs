//! The board's one JPEG codec: mozjpeg (libjpeg-turbo's SIMD code) decodes camera frames and
//! picture files and encodes the live view, snapshots and captured pictures.
//!
//! Why not the pure-Rust zune-jpeg (no C build, no nasm): measured on 640x480 MJPEG it decodes
//! 1.3-1.5x slower on x86 and needs 1.65x the aarch64 instructions per frame (Cortex-A72 count
//! under qemu, 21.3 M against 12.9 M), and decoding is the largest per-frame cost after inference.
//! `kestrel-edge bench` measures both when built with the `image-jpeg` feature (workstation
//! builds). On aarch64 mozjpeg builds without nasm (its SIMD there is C intrinsics).
//!
//! Builds without the `mozjpeg` feature (the trainer, which needs no camera) decode and encode
//! JPEG with `image`'s codec instead, through the same two functions.

#[cfg(feature = "mozjpeg")]
use std::panic::AssertUnwindSafe;

use image::RgbImage;

/// Read and decode a picture file as displayed: JPEG with [`decode`], other formats with `image`
/// ([`kestrel_shared::PreprocessSpec::load`]), the EXIF orientation applied either way
/// ([`kestrel_shared::picture`]: the trainer reads training pictures so, and so must a board
/// reading picture files); errors name the file.
pub fn load_picture(path: &std::path::Path) -> Result<RgbImage, kestrel_shared::PreprocessError> {
    use kestrel_shared::PreprocessError;
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !is_jpeg(&bytes) {
        return kestrel_shared::PreprocessSpec::load(path);
    }
    let img = decode(&bytes).map_err(|reason| PreprocessError::Decode {
        path: path.to_path_buf(),
        source: image::ImageError::Decoding(image::error::DecodingError::new(
            image::ImageFormat::Jpeg.into(),
            reason,
        )),
    })?;
    let o = kestrel_shared::picture::orientation(&bytes);
    Ok(kestrel_shared::picture::orient_rgb(img, o))
}

/// Whether `data` starts like a JPEG file (SOI marker).
pub fn is_jpeg(data: &[u8]) -> bool {
    data.starts_with(&[0xFF, 0xD8])
}

/// Decode a JPEG (baseline or progressive, with or without Huffman tables as UVC cameras send
/// them) to RGB. Never panics: mozjpeg reports libjpeg's fatal errors as panics, which are caught.
#[cfg(feature = "mozjpeg")]
pub fn decode(data: &[u8]) -> Result<RgbImage, String> {
    let run = || -> std::io::Result<RgbImage> {
        let mut d = mozjpeg::Decompress::new_mem(data)?.rgb()?;
        let (w, h) = (d.width(), d.height());
        let pixels: Vec<u8> = d.read_scanlines::<u8>()?;
        d.finish()?;
        RgbImage::from_raw(w as u32, h as u32, pixels).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the picture stops before its {w}x{h} pixels"),
            )
        })
    };
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(img)) if img.width() > 0 && img.height() > 0 => Ok(img),
        Ok(Ok(_)) => Err("the picture is empty".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("not a readable JPEG (the decoder gave up)".into()),
    }
}

/// Decode a JPEG to RGB with `image`'s codec (builds without mozjpeg; with neither codec this
/// says which feature to enable).
#[cfg(not(feature = "mozjpeg"))]
pub fn decode(data: &[u8]) -> Result<RgbImage, String> {
    match image::load_from_memory_with_format(data, image::ImageFormat::Jpeg) {
        Ok(img) if img.width() > 0 && img.height() > 0 => Ok(img.to_rgb8()),
        Ok(_) => Err("the picture is empty".into()),
        Err(e) => Err(format!("{e}{NO_CODEC_HINT}")),
    }
}

/// Encode RGB as a baseline JPEG of `quality` (1-100) with libjpeg's fastest settings (a live
/// view encodes every frame).
#[cfg(feature = "mozjpeg")]
pub fn encode(img: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    let run = || -> std::io::Result<Vec<u8>> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_fastest_defaults();
        c.set_size(img.width() as usize, img.height() as usize);
        c.set_quality(f32::from(quality.clamp(1, 100)));
        let mut started = c.start_compress(Vec::new())?;
        started.write_scanlines(img.as_raw())?;
        started.finish()
    };
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the encoder gave up on a {}x{} picture",
            img.width(),
            img.height()
        )),
    }
}

/// Encode RGB as a baseline JPEG of `quality` (1-100) with `image`'s codec (builds without
/// mozjpeg).
#[cfg(all(not(feature = "mozjpeg"), feature = "image-jpeg"))]
pub fn encode(img: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode_image(img)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A build with neither JPEG codec cannot encode.
#[cfg(not(any(feature = "mozjpeg", feature = "image-jpeg")))]
pub fn encode(img: &RgbImage, _quality: u8) -> Result<Vec<u8>, String> {
    Err(format!(
        "cannot encode a {}x{} JPEG{NO_CODEC_HINT}",
        img.width(),
        img.height()
    ))
}

/// What a build with neither JPEG codec says about JPEG.
#[cfg(not(any(feature = "mozjpeg", feature = "image-jpeg")))]
const NO_CODEC_HINT: &str =
    " (this kestrel-edge has no JPEG codec: build it with the `mozjpeg` or `image-jpeg` feature)";
#[cfg(all(not(feature = "mozjpeg"), feature = "image-jpeg"))]
const NO_CODEC_HINT: &str = "";

#[cfg(all(test, any(feature = "mozjpeg", feature = "image-jpeg")))]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_back_close_and_refuses_garbage() {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
        });
        let bytes = encode(&img, 95).unwrap();
        assert!(is_jpeg(&bytes));
        let back = decode(&bytes).unwrap();
        assert_eq!(back.dimensions(), (64, 48));
        let worst = img
            .pixels()
            .zip(back.pixels())
            .flat_map(|(a, b)| (0..3).map(move |c| (a.0[c] as i32 - b.0[c] as i32).abs()))
            .max()
            .unwrap();
        assert!(worst <= 12, "largest channel error {worst}");
        for bad in [
            &bytes[..bytes.len() / 3],
            &[0xFF, 0xD8, 1, 2, 3][..],
            b"not a picture",
            &[][..],
        ] {
            assert!(decode(bad).is_err(), "{} bytes accepted", bad.len());
        }
    }

    /// A phone photo (pixels stored sideways, EXIF orientation 6) is read as displayed, as the
    /// trainer reads it.
    #[test]
    fn picture_files_are_read_as_displayed() {
        let stored = RgbImage::from_fn(40, 20, |x, y| {
            if x < 10 && y < 10 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let rotated =
            kestrel_shared::picture::with_exif_orientation(&encode(&stored, 95).unwrap(), 6)
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phone.jpg");
        std::fs::write(&path, rotated).unwrap();
        let img = load_picture(&path).unwrap();
        assert_eq!(img.dimensions(), (20, 40));
        let p = img.get_pixel(15, 5);
        assert!(p[0] > 200 && p[2] < 60, "{p:?}");
    }
}
