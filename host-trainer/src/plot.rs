//! PNG plots of a run: learning curves and the confusion matrix.
//!
//! Drawn with plotters into a pixel buffer and saved with `image`; text uses DejaVu Sans, which
//! ships inside the binary so plots look the same on every machine (no system fonts needed).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::classify::EpochStats;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            tracing::warn!("the bundled font did not load; plots will have no text");
        }
    });
}

/// A plotting failure (names the file).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    /// The PNG file.
    pub path: String,
    /// Why.
    pub reason: String,
}

fn save(buf: Vec<u8>, (w, h): (u32, u32), path: &Path) -> Result<(), PlotError> {
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer of the drawn size");
    img.save(path).map_err(|e| PlotError {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |reason| PlotError {
        path: path.display().to_string(),
        reason,
    }
}

/// Loss and accuracy per epoch, training and validation, side by side.
pub fn learning_curves(history: &[EpochStats], title: &str, path: &Path) -> Result<(), PlotError> {
    learning_curves_of(history, title, "accuracy", path)
}

/// [`learning_curves`] with another name for the right panel's score (e.g. `mAP@0.5`, `mean IoU`:
/// detection runs keep their validation score in `val_accuracy`).
pub fn learning_curves_of(
    history: &[EpochStats],
    title: &str,
    score: &str,
    path: &Path,
) -> Result<(), PlotError> {
    register_font();
    let size = (1000u32, 420u32);
    let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path)(e.to_string()))?;
        let root = root
            .titled(title, (FONT, 20))
            .map_err(|e| err(path)(e.to_string()))?;
        let panels = root.split_evenly((1, 2));
        let last = history.len().max(1) as f64;
        let finite = |v: f64| v.is_finite().then_some(v);
        let max_loss = history
            .iter()
            .flat_map(|h| [finite(h.train_loss), finite(h.val_loss)])
            .flatten()
            .fold(0.1f64, f64::max);
        for (panel, (name, top, pick)) in panels
            .iter()
            .zip([("loss", max_loss * 1.05, 0usize), (score, 1.0, 1usize)])
        {
            let mut chart = ChartBuilder::on(panel)
                .caption(name, (FONT, 16))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(50)
                .build_cartesian_2d(1f64..last.max(2.0), 0f64..top)
                .map_err(|e| err(path)(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style((FONT, 12))
                .draw()
                .map_err(|e| err(path)(e.to_string()))?;
            for (series, color) in [("train", BLUE), ("validation", RED)] {
                let points: Vec<(f64, f64)> = history
                    .iter()
                    .filter_map(|h| {
                        let v = match (pick, series) {
                            (0, "train") => h.train_loss,
                            (0, _) => h.val_loss,
                            (_, "train") => h.train_accuracy,
                            _ => h.val_accuracy,
                        };
                        v.is_finite().then_some((h.epoch as f64, v))
                    })
                    .collect();
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(|e| err(path)(e.to_string()))?
                    .label(series)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 12))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(path)(e.to_string()))?;
        }
        root.present().map_err(|e| err(path)(e.to_string()))?;
    }
    save(buf, size, path)
}

/// The confusion matrix as a heat map with counts: rows are true classes, columns predictions.
pub fn confusion_matrix(
    confusion: &[Vec<usize>],
    labels: &[String],
    path: &Path,
) -> Result<(), PlotError> {
    register_font();
    let n = confusion.len().max(1);
    let cell = (480 / n as u32).clamp(24, 96);
    let size = (160 + cell * n as u32, 120 + cell * n as u32);
    let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path)(e.to_string()))?;
        let (ox, oy) = (140i32, 60i32);
        let style = |s: u32| TextStyle::from((FONT, s).into_font()).color(&BLACK);
        root.draw_text(
            "columns: predicted class, rows: true class",
            &style(14),
            (ox, 20),
        )
        .map_err(|e| err(path)(e.to_string()))?;
        for (t, row) in confusion.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            let y = oy + (t as u32 * cell) as i32;
            let name = labels.get(t).map_or("?", String::as_str);
            root.draw_text(name, &style(13), (8, y + cell as i32 / 2 - 7))
                .map_err(|e| err(path)(e.to_string()))?;
            for (p, &count) in row.iter().enumerate() {
                let x = ox + (p as u32 * cell) as i32;
                let share = count as f64 / total;
                let shade = (255.0 * (1.0 - share)) as u8;
                let fill = if t == p {
                    RGBColor(shade, 255, shade)
                } else {
                    RGBColor(255, shade, shade)
                };
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32, y + cell as i32)],
                    fill.filled(),
                ))
                .map_err(|e| err(path)(e.to_string()))?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32, y + cell as i32)],
                    BLACK,
                ))
                .map_err(|e| err(path)(e.to_string()))?;
                root.draw_text(
                    &count.to_string(),
                    &style(13),
                    (x + cell as i32 / 2 - 6, y + cell as i32 / 2 - 7),
                )
                .map_err(|e| err(path)(e.to_string()))?;
            }
        }
        for (p, name) in labels.iter().enumerate() {
            let x = ox + (p as u32 * cell) as i32;
            root.draw_text(name, &style(12), (x + 2, oy + (n as u32 * cell) as i32 + 6))
                .map_err(|e| err(path)(e.to_string()))?;
        }
        root.present().map_err(|e| err(path)(e.to_string()))?;
    }
    save(buf, size, path)
}

/// The charts of [`unit_chart`].
type UnitChart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A chart over [0, 1] x [0, 1.02] on `root` (precision-recall, F1 against the threshold), its mesh
/// labelled `x` and `y`.
fn unit_chart<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    (x, y): (&str, &str),
    path: &Path,
) -> Result<UnitChart<'a, 'b>, PlotError> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
        .map_err(|e| err(path)(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .label_style((FONT, 12))
        .draw()
        .map_err(|e| err(path)(e.to_string()))?;
    Ok(chart)
}

/// The legend of a [`unit_chart`], lower left.
fn unit_legend<'a, 'b: 'a>(chart: &mut UnitChart<'a, 'b>, path: &Path) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path)(e.to_string()))
}

/// Precision-recall curves at IoU 0.5, one line per class (`curves[k]` = `(recall, precision)`
/// points of class k; empty curves are left out), with each class's AP in the legend.
pub fn pr_curves(
    curves: &[Vec<(f64, f64)>],
    labels: &[String],
    ap: &[Option<f64>],
    path: &Path,
) -> Result<(), PlotError> {
    register_font();
    let size = (640u32, 520u32);
    let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path)(e.to_string()))?;
        let mut chart = unit_chart(
            &root,
            "precision-recall at IoU 0.5",
            ("recall", "precision"),
            path,
        )?;
        for (k, points) in curves.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
            let color = Palette99::pick(k).to_rgba();
            let name = labels.get(k).map_or(format!("class {k}"), Clone::clone);
            let ap = ap.get(k).copied().flatten().unwrap_or(f64::NAN);
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| err(path)(e.to_string()))?
                .label(format!("{name} (AP50 {ap:.3})"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        unit_legend(&mut chart, path)?;
        root.present().map_err(|e| err(path)(e.to_string()))?;
    }
    save(buf, size, path)
}

/// F1 against the score threshold at IoU 0.5: one thin line per class (`curves[k]`, at
/// `thresholds`; empty curves are left out) and a thick one over all classes, whose peak is
/// named in the caption (the threshold to deploy with).
pub fn f1_curves(
    thresholds: &[f64],
    curves: &[Vec<f64>],
    all: &[f64],
    labels: &[String],
    path: &Path,
) -> Result<(), PlotError> {
    register_font();
    let size = (640u32, 520u32);
    let best = thresholds
        .iter()
        .zip(all)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or((0.0, 0.0), |(t, f)| (*t, *f));
    let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path)(e.to_string()))?;
        let caption = format!(
            "F1 at IoU 0.5: all classes {:.2} at score {:.2}",
            best.1, best.0
        );
        let mut chart = unit_chart(&root, &caption, ("score threshold", "F1"), path)?;
        for (k, f1) in curves.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
            let color = Palette99::pick(k).to_rgba();
            let name = labels.get(k).map_or(format!("class {k}"), Clone::clone);
            chart
                .draw_series(LineSeries::new(
                    thresholds.iter().copied().zip(f1.iter().copied()),
                    color.stroke_width(1),
                ))
                .map_err(|e| err(path)(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .draw_series(LineSeries::new(
                thresholds.iter().copied().zip(all.iter().copied()),
                BLUE.stroke_width(3),
            ))
            .map_err(|e| err(path)(e.to_string()))?
            .label("all classes")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(3)));
        unit_legend(&mut chart, path)?;
        root.present().map_err(|e| err(path)(e.to_string()))?;
    }
    save(buf, size, path)
}

/// Draw detections onto a picture: a coloured frame per box (colour by class) and a
/// `label score` tag above it. Used by `predict --draw`.
pub fn draw_detections(
    img: &mut image::RgbImage,
    dets: &[kestrel_shared::Detection],
    labels: &[String],
) -> Result<(), PlotError> {
    register_font();
    let (w, h) = img.dimensions();
    let e = |e: String| PlotError {
        path: "(picture)".into(),
        reason: e,
    };
    let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
    let thick = (w.min(h) / 160).max(1);
    let font = (w.min(h) / 20).clamp(10, 24);
    for d in dets {
        let color = Palette99::pick(d.class).to_rgba();
        let b = d.bbox;
        let (x0, y0, x1, y1) = (b.x0 as i32, b.y0 as i32, b.x1 as i32, b.y1 as i32);
        root.draw(&Rectangle::new(
            [(x0, y0), (x1, y1)],
            color.stroke_width(thick),
        ))
        .map_err(|x| e(x.to_string()))?;
        let name = labels
            .get(d.class)
            .map_or(format!("{}", d.class), Clone::clone);
        let ty = (y0 - font as i32 - 2).max(0);
        root.draw(&Text::new(
            format!("{name} {:.2}", d.score),
            (x0 + 2, ty),
            (FONT, font).into_font().color(&color),
        ))
        .map_err(|x| e(x.to_string()))?;
    }
    root.present().map_err(|x| e(x.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_pngs_with_ink_where_the_data_is() {
        let dir = tempfile::tempdir().unwrap();
        let history: Vec<EpochStats> = (1..=5)
            .map(|e| EpochStats {
                epoch: e,
                train_loss: 1.0 / e as f64,
                train_accuracy: 0.5 + 0.1 * e as f64,
                val_loss: 1.2 / e as f64,
                val_accuracy: 0.4 + 0.1 * e as f64,
                lr: 1e-3,
            })
            .collect();
        let p = dir.path().join("curves.png");
        learning_curves(&history, "test run", &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1000, 420));
        let red = img
            .pixels()
            .filter(|px| px.0[0] > 200 && px.0[1] < 80 && px.0[2] < 80)
            .count();
        let blue = img
            .pixels()
            .filter(|px| px.0[2] > 200 && px.0[0] < 80 && px.0[1] < 80)
            .count();
        assert!(
            red > 200 && blue > 200,
            "curves drawn: red {red}, blue {blue}"
        );

        let p = dir.path().join("confusion.png");
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        confusion_matrix(&[vec![5, 0], vec![1, 4]], &labels, &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        // The top-left cell (all correct) is pure green.
        let (x, y) = (140 + 5, 60 + 5);
        assert_eq!(img.get_pixel(x, y).0, [0, 255, 0]);
        // The off-diagonal zero cell is white.
        assert_eq!(img.get_pixel(140 + 96 + 5, 60 + 5).0, [255, 255, 255]);
    }
}
