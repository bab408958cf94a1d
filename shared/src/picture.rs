//! Picture files as people see them: every reader of a picture file goes through here, so the EXIF
//! orientation a phone writes (the pixels stored sideways, a tag saying "rotate 90° to display")
//! is applied once, the same way, before any box is drawn on it or any pixel reaches a model.
//!
//! Annotation tools (labelImg, CVAT, Roboflow, Label Studio) show the picture as displayed, so
//! their boxes are in displayed coordinates: the trainer must read the size ([`dimensions`]) and
//! the pixels ([`decode`], [`open`]) the same way, or every box of a rotated photo is wrong.

use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, ImageResult, RgbImage};

use crate::preprocess::PreprocessError;

/// The orientation tag of an encoded picture (any format `image` reads; JPEG without `image`'s
/// JPEG codec too), or [`Orientation::NoTransforms`] when it has none or it cannot be read.
pub fn orientation(bytes: &[u8]) -> Orientation {
    if let Some(o) = jpeg_exif(bytes).and_then(Orientation::from_exif_chunk) {
        return o;
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format();
    reader
        .ok()
        .and_then(|r| r.into_decoder().ok())
        .and_then(|mut d| d.orientation().ok())
        .unwrap_or(Orientation::NoTransforms)
}

/// The EXIF chunk (TIFF header onwards) of a JPEG file's APP1 segment, read from the marker
/// segments before the first scan; `None` for other files or a JPEG without EXIF.
fn jpeg_exif(bytes: &[u8]) -> Option<&[u8]> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        // Fill bytes, and markers without a length (RSTn, TEM).
        if marker == 0xFF {
            i += 1;
            continue;
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        // Start of scan or end of image: no more metadata.
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        let body = bytes.get(i + 4..i + 2 + len)?;
        if marker == 0xE1
            && let Some(tiff) = body.strip_prefix(b"Exif\0\0")
        {
            return Some(tiff);
        }
        i += 2 + len;
    }
    None
}

/// Decode an encoded picture and turn it as its EXIF orientation says (the pixels as displayed).
pub fn decode(bytes: &[u8]) -> ImageResult<DynamicImage> {
    let mut decoder = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()?
        .into_decoder()?;
    let o = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(o);
    Ok(img)
}

/// An RGB picture turned by `o` (for decoders outside `image`, such as the board's mozjpeg).
pub fn orient_rgb(img: RgbImage, o: Orientation) -> RgbImage {
    if o == Orientation::NoTransforms {
        return img;
    }
    let mut d = DynamicImage::ImageRgb8(img);
    d.apply_orientation(o);
    d.into_rgb8()
}

/// Width and height of a picture file as displayed (swapped when the EXIF orientation turns it
/// by 90°), read from its header without decoding the pixels.
pub fn dimensions(path: &Path) -> ImageResult<(u32, u32)> {
    let mut decoder = ImageReader::open(path)?
        .with_guessed_format()?
        .into_decoder()?;
    let (w, h) = decoder.dimensions();
    let o = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(if turns_sideways(o) { (h, w) } else { (w, h) })
}

/// Whether an orientation swaps width and height.
pub fn turns_sideways(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Read and decode a picture file as displayed, in RGB; errors name the file.
pub fn open(path: &Path) -> Result<RgbImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let img = decode(&bytes).map_err(|source| PreprocessError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(img.into_rgb8())
}

/// `jpeg` (an encoded JPEG) with an EXIF APP1 segment whose orientation tag is `exif` (1..=8),
/// written by hand (big-endian TIFF, one IFD entry) right after the start marker: what a phone
/// writes. For tests (here, in the trainer and end to end) and fixtures; `None` if `jpeg` is not a
/// JPEG.
pub fn with_exif_orientation(jpeg: &[u8], exif: u8) -> Option<Vec<u8>> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2A");
    tiff.extend_from_slice(&8u32.to_be_bytes()); // first IFD right after the header
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // one value
    tiff.extend_from_slice(&u16::from(exif).to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut body = b"Exif\0\0".to_vec();
    body.extend_from_slice(&tiff);
    let len = u16::try_from(body.len() + 2).expect("small segment");
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&jpeg[2..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40x20 stored, red in the stored top-left 10x10, blue elsewhere.
    fn stored() -> RgbImage {
        RgbImage::from_fn(40, 20, |x, y| {
            if x < 10 && y < 10 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        })
    }

    fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(img)
            .unwrap();
        out
    }

    #[test]
    fn rotate_90_tag_turns_size_and_pixels() {
        let bytes = with_exif_orientation(&jpeg(&stored()), 6).unwrap();
        assert_eq!(orientation(&bytes), Orientation::Rotate90);
        let img = decode(&bytes).unwrap().into_rgb8();
        // Displayed: 20 wide, 40 tall; the stored top-left is now the top-right.
        assert_eq!(img.dimensions(), (20, 40));
        let p = img.get_pixel(15, 5);
        assert!(p[0] > 200 && p[2] < 60, "{p:?}");
        let q = img.get_pixel(5, 5);
        assert!(q[2] > 200 && q[0] < 60, "{q:?}");
        let d = tempfile_path("rot.jpg");
        std::fs::write(&d, &bytes).unwrap();
        assert_eq!(dimensions(&d).unwrap(), (20, 40));
        assert_eq!(open(&d).unwrap().dimensions(), (20, 40));
        std::fs::remove_file(d).unwrap();
    }

    #[test]
    fn no_tag_is_no_turn() {
        let plain = jpeg(&stored());
        assert_eq!(orientation(&plain), Orientation::NoTransforms);
        assert_eq!(orientation(b"not a picture"), Orientation::NoTransforms);
        assert_eq!(decode(&plain).unwrap().width(), 40);
    }

    fn tempfile_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("kestrel-picture-{}-{name}", std::process::id()))
    }
}
