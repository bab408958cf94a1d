//! Annotating frames: boxes, labels and the classification drawn onto a copy of the picture.
//!
//! Text uses a built-in 5x7 bitmap font (printable ASCII), scaled x2, so the board needs no font
//! files and the binary no font crate.

use image::{Rgb, RgbImage};

use crate::sink::FrameResult;

/// Outline width of boxes, pixels.
const LINE: i64 = 2;
/// Font scale: each font pixel becomes `SCALE x SCALE` image pixels.
const SCALE: i64 = 2;
/// Glyph cell: 5 columns and 1 column of spacing, 7 rows.
const GLYPH_W: i64 = 5;
const GLYPH_H: i64 = 7;
const ADVANCE: i64 = (GLYPH_W + 1) * SCALE;
/// Padding around label text inside its background, pixels.
const PAD: i64 = 2;
/// Height of a label (text and padding), pixels.
const LABEL_H: i64 = GLYPH_H * SCALE + 2 * PAD;

/// Box colours, one per class index (repeating): bright enough to see on camera pictures.
const PALETTE: [[u8; 3]; 8] = [
    [255, 56, 56],
    [56, 200, 255],
    [255, 200, 0],
    [72, 230, 72],
    [255, 112, 255],
    [255, 150, 50],
    [140, 120, 255],
    [0, 230, 190],
];

/// The 5x7 font for ASCII 0x20..=0x7E: five column bytes per glyph, bit 0 the top row.
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x00, 0x00, 0x5F, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], // #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x05, 0x03, 0x00, 0x00], // '
    [0x00, 0x1C, 0x22, 0x41, 0x00], // (
    [0x00, 0x41, 0x22, 0x1C, 0x00], // )
    [0x14, 0x08, 0x3E, 0x08, 0x14], // *
    [0x08, 0x08, 0x3E, 0x08, 0x08], // +
    [0x00, 0x50, 0x30, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], // 0
    [0x00, 0x42, 0x7F, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4B, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3C, 0x4A, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1E], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x56, 0x36, 0x00, 0x00], // ;
    [0x08, 0x14, 0x22, 0x41, 0x00], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x00, 0x41, 0x22, 0x14, 0x08], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3E], // @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], // A
    [0x7F, 0x49, 0x49, 0x49, 0x36], // B
    [0x3E, 0x41, 0x41, 0x41, 0x22], // C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], // D
    [0x7F, 0x49, 0x49, 0x49, 0x41], // E
    [0x7F, 0x09, 0x09, 0x09, 0x01], // F
    [0x3E, 0x41, 0x49, 0x49, 0x7A], // G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], // H
    [0x00, 0x41, 0x7F, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3F, 0x01], // J
    [0x7F, 0x08, 0x14, 0x22, 0x41], // K
    [0x7F, 0x40, 0x40, 0x40, 0x40], // L
    [0x7F, 0x02, 0x0C, 0x02, 0x7F], // M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], // N
    [0x3E, 0x41, 0x41, 0x41, 0x3E], // O
    [0x7F, 0x09, 0x09, 0x09, 0x06], // P
    [0x3E, 0x41, 0x51, 0x21, 0x5E], // Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7F, 0x01, 0x01], // T
    [0x3F, 0x40, 0x40, 0x40, 0x3F], // U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], // V
    [0x3F, 0x40, 0x38, 0x40, 0x3F], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x07, 0x08, 0x70, 0x08, 0x07], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x7F, 0x41, 0x41, 0x00], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // backslash
    [0x00, 0x41, 0x41, 0x7F, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7F, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7F], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7E, 0x09, 0x01, 0x02], // f
    [0x0C, 0x52, 0x52, 0x52, 0x3E], // g
    [0x7F, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7D, 0x40, 0x00], // i
    [0x20, 0x40, 0x44, 0x3D, 0x00], // j
    [0x7F, 0x10, 0x28, 0x44, 0x00], // k
    [0x00, 0x41, 0x7F, 0x40, 0x00], // l
    [0x7C, 0x04, 0x18, 0x04, 0x78], // m
    [0x7C, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0x7C, 0x14, 0x14, 0x14, 0x08], // p
    [0x08, 0x14, 0x14, 0x18, 0x7C], // q
    [0x7C, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3F, 0x44, 0x40, 0x20], // t
    [0x3C, 0x40, 0x40, 0x20, 0x7C], // u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], // v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x0C, 0x50, 0x50, 0x50, 0x3C], // y
    [0x44, 0x64, 0x54, 0x4C, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7F, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];

/// The colour boxes of class `class` are drawn in.
pub fn class_color(class: usize) -> Rgb<u8> {
    Rgb(PALETTE[class % PALETTE.len()])
}

/// A copy of `image` with the result drawn on it: every detection's box (2 px outline, a colour
/// per class) with "label 0.87" above it, and the classification, if any, in the top-left corner.
pub fn annotate(image: &RgbImage, result: &FrameResult) -> RgbImage {
    let mut out = image.clone();
    let mut canvas = Canvas(&mut out);
    // Worst first, so the best detection's label ends on top where labels overlap.
    for d in result.detections.iter().rev() {
        let color = class_color(d.class);
        let b = &d.bbox;
        let (x0, y0) = (b.x0.round() as i64, b.y0.round() as i64);
        let (x1, y1) = (b.x1.round() as i64 - 1, b.y1.round() as i64 - 1);
        canvas.outline(x0, y0, x1.max(x0), y1.max(y0), color);
        let text = format!("{} {:.2}", d.label, d.score);
        // Above the box when there is room, else just inside its top edge.
        let ty = if y0 - LABEL_H >= 0 { y0 - LABEL_H } else { y0 };
        canvas.label(x0, ty, &text, color, Rgb([0, 0, 0]));
    }
    if let Some(c) = &result.classification {
        let text = format!("{} {:.2}", c.label, c.score);
        canvas.label(0, 0, &text, Rgb([0, 0, 0]), Rgb([255, 255, 255]));
    }
    out
}

/// Width in pixels of `text` as [`annotate`] draws it (without padding).
pub fn text_width(text: &str) -> u32 {
    (text.chars().count() as i64 * ADVANCE - SCALE).max(0) as u32
}

/// `image` as a baseline JPEG of the given quality (1..=100), with the board's JPEG codec.
pub(crate) fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    crate::jpeg::encode(image, quality)
}

/// Drawing with clipping: coordinates may fall outside the picture.
struct Canvas<'a>(&'a mut RgbImage);

impl Canvas<'_> {
    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
        let (w, h) = (i64::from(self.0.width()), i64::from(self.0.height()));
        for y in y0.max(0)..=y1.min(h - 1) {
            for x in x0.max(0)..=x1.min(w - 1) {
                self.0.put_pixel(x as u32, y as u32, color);
            }
        }
    }

    /// A rectangle outline, inclusive corners, `LINE` pixels wide, drawn inwards.
    fn outline(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
        self.fill(x0, y0, x1, y0 + LINE - 1, color);
        self.fill(x0, y1 - LINE + 1, x1, y1, color);
        self.fill(x0, y0, x0 + LINE - 1, y1, color);
        self.fill(x1 - LINE + 1, y0, x1, y1, color);
    }

    /// `text` on a filled background whose top-left corner is (x, y), kept inside the picture
    /// horizontally when it fits.
    fn label(&mut self, x: i64, y: i64, text: &str, bg: Rgb<u8>, fg: Rgb<u8>) {
        let w = i64::from(text_width(text)) + 2 * PAD;
        let x = x.min(i64::from(self.0.width()) - w).max(0);
        self.fill(x, y, x + w - 1, y + LABEL_H - 1, bg);
        self.text(x + PAD, y + PAD, text, fg);
    }

    fn text(&mut self, x: i64, y: i64, text: &str, color: Rgb<u8>) {
        for (i, ch) in text.chars().enumerate() {
            let code = ch as u32;
            let glyph = if (0x20..=0x7E).contains(&code) {
                &FONT[(code - 0x20) as usize]
            } else {
                &FONT[usize::from(b'?' - 0x20)]
            };
            let gx = x + i as i64 * ADVANCE;
            for (col, bits) in glyph.iter().enumerate() {
                for row in 0..GLYPH_H {
                    if bits >> row & 1 == 1 {
                        let px = gx + col as i64 * SCALE;
                        let py = y + row * SCALE;
                        self.fill(px, py, px + SCALE - 1, py + SCALE - 1, color);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kestrel_shared::BBox;

    use super::*;
    use crate::sink::{Classification, LabeledDetection};

    fn result(detections: Vec<LabeledDetection>) -> FrameResult {
        FrameResult {
            timestamp_ms: 0,
            source_ms: 0.0,
            frame: 0,
            width: 160,
            height: 120,
            detections,
            classification: None,
            inference_ms: 1.0,
        }
    }

    fn det(label: &str, class: usize, score: f32, b: [f32; 4]) -> LabeledDetection {
        LabeledDetection {
            label: label.into(),
            class,
            score,
            bbox: BBox::from(b),
        }
    }

    fn gray(w: u32, h: u32) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb([90, 90, 90]))
    }

    fn changed(a: &RgbImage, b: &RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        let mut n = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                n += usize::from(a.get_pixel(x, y) != b.get_pixel(x, y));
            }
        }
        n
    }

    #[test]
    fn box_outline_drawn_centre_untouched_label_above() {
        let img = gray(160, 120);
        let r = result(vec![det("cat", 1, 0.87, [40.0, 50.0, 120.0, 110.0])]);
        let out = annotate(&img, &r);
        assert_eq!(out.dimensions(), img.dimensions());
        let c = class_color(1);
        // Both pixels of the 2 px outline on every side, in the class colour.
        for (x, y) in [(40, 80), (41, 80), (119, 80), (118, 80), (80, 50), (80, 51)] {
            assert_eq!(*out.get_pixel(x, y), c, "outline pixel ({x}, {y})");
        }
        for (x, y) in [(80, 109), (80, 108)] {
            assert_eq!(*out.get_pixel(x, y), c, "bottom edge ({x}, {y})");
        }
        // Just inside the outline and the centre are untouched; so is the outside below.
        assert_eq!(changed(&img, &out, 42, 52, 118, 108), 0);
        assert_eq!(changed(&img, &out, 0, 110, 160, 120), 0);
        // The label sits above the box: background in the class colour and black text pixels.
        let label_h = LABEL_H as u32;
        let band = (50 - label_h, 50);
        let w = text_width("cat 0.87") + 2 * PAD as u32;
        let mut black = 0;
        let mut bg = 0;
        for y in band.0..band.1 {
            for x in 40..40 + w {
                match *out.get_pixel(x, y) {
                    Rgb([0, 0, 0]) => black += 1,
                    p if p == c => bg += 1,
                    p => panic!("unexpected colour {p:?} in the label at ({x}, {y})"),
                }
            }
        }
        assert!(black > 100, "only {black} text pixels");
        assert!(bg > black, "background {bg} vs text {black}");
        // Nothing right of the label on its band.
        assert_eq!(changed(&img, &out, 40 + w, band.0, 160, band.1), 0);
    }

    #[test]
    fn label_moves_inside_at_the_top_edge_and_boxes_are_clipped() {
        let img = gray(64, 48);
        let r = result(vec![det("dog", 0, 0.5, [-10.0, 0.0, 90.0, 30.0])]);
        let out = annotate(&img, &r);
        // The box runs off the left and right edges: only top and bottom lines remain visible
        // apart from the label, which is drawn inside the box at the top.
        assert_eq!(*out.get_pixel(30, 29), class_color(0));
        assert_eq!(changed(&img, &out, 0, 31, 64, 48), 0);
        assert!(changed(&img, &out, 0, 2, 64, LABEL_H as u32) > 50);
    }

    #[test]
    fn classification_text_in_the_corner() {
        let img = gray(200, 40);
        let mut r = result(vec![]);
        r.classification = Some(Classification {
            label: "circle".into(),
            class: 0,
            score: 0.99,
        });
        let out = annotate(&img, &r);
        let w = text_width("circle 0.99") + 2 * PAD as u32;
        let mut white = 0;
        for y in 0..LABEL_H as u32 {
            for x in 0..w {
                white += usize::from(*out.get_pixel(x, y) == Rgb([255, 255, 255]));
            }
        }
        assert!(white > 100, "only {white} text pixels");
        assert_eq!(changed(&img, &out, 0, LABEL_H as u32, 200, 40), 0);
        assert_eq!(changed(&img, &out, w, 0, 200, 40), 0);
    }

    #[test]
    fn glyphs_render_as_expected() {
        // "1" and "-" at scale 2: the vertical stroke of "1" is font column 2, the bar of "-" row 3.
        let mut img = RgbImage::new(30, 20);
        Canvas(&mut img).text(0, 0, "1-", Rgb([255, 255, 255]));
        let on = |x: u32, y: u32| img.get_pixel(x, y)[0] == 255;
        for row in 0..7 {
            assert!(
                on(4, row * 2) && on(5, row * 2 + 1),
                "stroke of 1 at row {row}"
            );
        }
        for col in 0..5 {
            assert!(on(12 + col * 2, 6), "bar of - at column {col}");
        }
        assert!(!on(12, 0) && !on(12, 13));
        // Unknown characters draw as '?', not nothing.
        let mut q = RgbImage::new(12, 14);
        Canvas(&mut q).text(0, 0, "é", Rgb([255, 255, 255]));
        assert!(q.pixels().any(|p| p[0] == 255));
    }

    #[test]
    fn jpeg_round_trip_keeps_the_size() {
        let img = gray(33, 17);
        let bytes = encode_jpeg(&img, 75).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
        let back = crate::jpeg::decode(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (33, 17));
    }
}
