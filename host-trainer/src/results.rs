//! `results.csv` of a run, as Ultralytics users look for it: one row per epoch of both phases (1:
//! the head on cached features, 2: fine-tuning), with the losses, the validation metrics of the
//! task (accuracy; or precision, recall, mAP@0.5, mAP@0.5:0.95, and the single head's mean IoU or
//! the centroid head's centre F1) and the learning rate. A column appears when any row has it.

use std::io::Write;
use std::path::Path;

/// One epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultRow {
    /// Epoch, counted on across phases.
    pub epoch: usize,
    /// 1 (head) or 2 (fine-tuning).
    pub phase: u8,
    /// Mean training loss.
    pub train_loss: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Training accuracy (classification).
    pub train_accuracy: Option<f64>,
    /// Validation accuracy (classification).
    pub val_accuracy: Option<f64>,
    /// Validation precision at the run's score threshold (detection).
    pub precision: Option<f64>,
    /// Validation recall at the run's score threshold (detection).
    pub recall: Option<f64>,
    /// Validation mAP@0.5 (detection).
    pub map50: Option<f64>,
    /// Validation mAP@0.5:0.95 (detection).
    pub map50_95: Option<f64>,
    /// Validation mean IoU (the single detection head).
    pub mean_iou: Option<f64>,
    /// Validation centre F1 (the centroid head).
    pub centre_f1: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
}

/// Rows of a classification run: phase 1, then phase 2 (if any), epochs counted on.
pub fn classification(
    phase1: &[crate::classify::train::EpochStats],
    phase2: &[crate::classify::train::EpochStats],
) -> Vec<ResultRow> {
    let row = |e: &crate::classify::train::EpochStats, phase: u8, offset: usize| ResultRow {
        epoch: e.epoch + offset,
        phase,
        train_loss: e.train_loss,
        val_loss: e.val_loss,
        train_accuracy: Some(e.train_accuracy),
        val_accuracy: Some(e.val_accuracy),
        lr: e.lr,
        ..Default::default()
    };
    let mut rows: Vec<ResultRow> = phase1.iter().map(|e| row(e, 1, 0)).collect();
    rows.extend(phase2.iter().map(|e| row(e, 2, phase1.len())));
    rows
}

/// An optional column: its name and its cell in a row.
type Column = (&'static str, fn(&mut ResultRow) -> &mut Option<f64>);

const OPTIONAL: [Column; 8] = [
    ("train_accuracy", |r| &mut r.train_accuracy),
    ("val_accuracy", |r| &mut r.val_accuracy),
    ("precision", |r| &mut r.precision),
    ("recall", |r| &mut r.recall),
    ("map50", |r| &mut r.map50),
    ("map50_95", |r| &mut r.map50_95),
    ("mean_iou", |r| &mut r.mean_iou),
    ("centre_f1", |r| &mut r.centre_f1),
];

/// The value of an optional column in `row`.
fn cell(row: &ResultRow, column: &Column) -> Option<f64> {
    *(column.1)(&mut row.clone())
}

/// Writes `rows` to `path` (columns: epoch, phase, train_loss, val_loss, the metrics any row has,
/// lr; an empty cell where a row lacks one).
pub fn write(path: &Path, rows: &[ResultRow]) -> std::io::Result<()> {
    let used: Vec<&Column> = OPTIONAL
        .iter()
        .filter(|c| rows.iter().any(|r| cell(r, c).is_some()))
        .collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut header = vec!["epoch", "phase", "train_loss", "val_loss"];
    header.extend(used.iter().map(|(name, _)| *name));
    header.push("lr");
    writeln!(f, "{}", header.join(","))?;
    for r in rows {
        let mut cells = vec![
            r.epoch.to_string(),
            r.phase.to_string(),
            r.train_loss.to_string(),
            r.val_loss.to_string(),
        ];
        cells.extend(
            used.iter()
                .map(|c| cell(r, c).map_or(String::new(), |v| v.to_string())),
        );
        cells.push(r.lr.to_string());
        writeln!(f, "{}", cells.join(","))?;
    }
    f.flush()
}

/// Reads rows [`write`] wrote (a resumed run keeps the rows of the epochs it does not redo).
pub fn read(path: &Path) -> std::io::Result<Vec<ResultRow>> {
    let bad = |line: usize, what: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}:{line}: {what}", path.display()),
        )
    };
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(bad(
                i + 2,
                format!("{} cells for {} columns", cells.len(), header.len()),
            ));
        }
        let mut r = ResultRow::default();
        for (name, value) in header.iter().zip(&cells) {
            let number = || -> std::io::Result<f64> {
                value
                    .parse()
                    .map_err(|_| bad(i + 2, format!("{name} is not a number: {value:?}")))
            };
            match *name {
                "epoch" => r.epoch = number()? as usize,
                "phase" => r.phase = number()? as u8,
                "train_loss" => r.train_loss = number()?,
                "val_loss" => r.val_loss = number()?,
                "lr" => r.lr = number()?,
                other => {
                    let column = OPTIONAL
                        .iter()
                        .find(|c| c.0 == other)
                        .ok_or_else(|| bad(1, format!("unknown column {other}")))?;
                    *(column.1)(&mut r) = if value.is_empty() {
                        None
                    } else {
                        Some(number()?)
                    };
                }
            }
        }
        rows.push(r);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_follow_the_rows_and_phases_count_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let rows = [
            ResultRow {
                epoch: 1,
                phase: 1,
                train_loss: 0.5,
                val_loss: 0.25,
                map50: Some(0.75),
                precision: Some(0.5),
                lr: 0.001,
                ..Default::default()
            },
            ResultRow {
                epoch: 2,
                phase: 2,
                train_loss: 0.125,
                val_loss: 0.25,
                lr: 0.0001,
                ..Default::default()
            },
        ];
        write(&path, &rows).unwrap();
        assert_eq!(read(&path).unwrap(), rows);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "epoch,phase,train_loss,val_loss,precision,map50,lr\n\
             1,1,0.5,0.25,0.5,0.75,0.001\n2,2,0.125,0.25,,,0.0001\n"
        );
    }
}
