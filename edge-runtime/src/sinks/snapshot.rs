//! Annotated snapshots on disk (`--save DIR --every N`): a record of what the model saw, to look
//! through later or to turn into new training pictures.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::draw::{annotate, encode_jpeg};
use crate::sink::{FrameResult, Sink, SinkError};
use crate::stats::StatsSnapshot;

/// JPEG quality of snapshots.
const QUALITY: u8 = 85;

/// Setting up snapshots failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// `--every` must be at least 1.
    #[error("--every must be at least 1 (1 saves every frame), not {0}")]
    Every(u64),
    /// The directory could not be created.
    #[error("cannot create the snapshot directory {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The `save` sink: every `every`-th result (the 1st, the N+1th, ...) written annotated as
/// `DIR/frame-{frame:08}.jpg`, `frame` being the source's frame number.
///
/// Each file is written under a temporary name and renamed, so a reader never sees half a JPEG.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    every: u64,
    seen: u64,
}

impl Snapshots {
    /// Snapshots into `dir` (created with its parents if missing) every `every` results.
    pub fn new(dir: impl Into<PathBuf>, every: u64) -> Result<Self, SnapshotError> {
        let dir = dir.into();
        if every == 0 {
            return Err(SnapshotError::Every(every));
        }
        fs::create_dir_all(&dir).map_err(|source| SnapshotError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        Ok(Snapshots {
            dir,
            every,
            seen: 0,
        })
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a frame number is saved as.
    pub fn path_for(&self, frame: u64) -> PathBuf {
        self.dir.join(format!("frame-{frame:08}.jpg"))
    }
}

impl Sink for Snapshots {
    fn name(&self) -> &str {
        "save"
    }

    fn handle(
        &mut self,
        result: &FrameResult,
        image: &RgbImage,
        _stats: &StatsSnapshot,
    ) -> Result<(), SinkError> {
        let due = self.seen.is_multiple_of(self.every);
        self.seen += 1;
        if !due {
            return Ok(());
        }
        let path = self.path_for(result.frame);
        let jpeg =
            encode_jpeg(&annotate(image, result), QUALITY).map_err(|e| SinkError::Other {
                sink: "save".into(),
                reason: format!("encoding {}: {e}", path.display()),
            })?;
        let tmp = path.with_extension("jpg.part");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&jpeg)?;
            f.flush()?;
            drop(f);
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            SinkError::Io {
                sink: format!("save {}", path.display()),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    fn result(frame: u64) -> FrameResult {
        FrameResult {
            timestamp_ms: 0,
            source_ms: frame as f64 * 100.0,
            frame,
            width: 48,
            height: 32,
            detections: vec![],
            classification: None,
            inference_ms: 1.0,
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_third_of_ten_frames() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/snaps");
        let mut sink = Snapshots::new(&dir, 3).unwrap();
        let img = RgbImage::from_pixel(48, 32, Rgb([10, 200, 30]));
        for f in 0..10 {
            sink.handle(&result(f), &img, &StatsSnapshot::default())
                .unwrap();
        }
        assert_eq!(
            listing(&dir),
            [
                "frame-00000000.jpg",
                "frame-00000003.jpg",
                "frame-00000006.jpg",
                "frame-00000009.jpg"
            ]
        );
        let back =
            crate::jpeg::decode(&std::fs::read(dir.join("frame-00000006.jpg")).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (48, 32));
    }

    #[test]
    fn every_counts_results_not_frame_numbers() {
        // Frames 0, 5, 7, 8 arrive (others dropped): every 2nd result is 0 and 7.
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = Snapshots::new(tmp.path(), 2).unwrap();
        let img = RgbImage::new(8, 8);
        for f in [0, 5, 7, 8] {
            sink.handle(&result(f), &img, &StatsSnapshot::default())
                .unwrap();
        }
        assert_eq!(
            listing(tmp.path()),
            ["frame-00000000.jpg", "frame-00000007.jpg"]
        );
    }

    #[test]
    fn errors_name_the_directory() {
        assert!(matches!(
            Snapshots::new("/tmp/x", 0),
            Err(SnapshotError::Every(0))
        ));
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        let err = Snapshots::new(file.join("sub"), 1).unwrap_err().to_string();
        assert!(err.contains("a-file/sub"), "{err}");
        // The directory vanishing later is a sink error naming the file, not a panic.
        let dir = tmp.path().join("gone");
        let mut sink = Snapshots::new(&dir, 1).unwrap();
        fs::remove_dir(&dir).unwrap();
        let err = sink
            .handle(&result(4), &RgbImage::new(4, 4), &StatsSnapshot::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone/frame-00000004.jpg"), "{err}");
    }
}
