//! The ImageFolder convention: `DATA/<label>/**/*.{jpg,jpeg,png,webp,bmp}` (pictures in subfolders
//! of a class folder count for that class; any format `image` can read here), labels sorted by
//! name, with an optional `DATA/train/` + `DATA/val/` (or `DATA/valid/`, Roboflow's name) split,
//! otherwise a seeded stratified split (`--val-fraction`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// The usual picture file extensions, for messages; [`is_image`] accepts every format this build
/// of `image` reads.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp"];

/// One labelled picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The file.
    pub path: PathBuf,
    /// Index into [`Dataset::labels`].
    pub label: usize,
}

/// Where the validation set came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Split {
    /// `DATA/train/` and `DATA/val/` as the user laid them out.
    Folders,
    /// Held out from the labelled folders: `fraction` of each class, shuffled with `seed`.
    Stratified {
        /// Share of each class held out.
        fraction: f64,
        /// Shuffle seed.
        seed: u64,
    },
}

/// A scanned dataset: label names and the two sets of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Root directory.
    pub root: PathBuf,
    /// Class names, sorted.
    pub labels: Vec<String>,
    /// Training samples, ordered by label then file name.
    pub train: Vec<Sample>,
    /// Validation samples, ordered by label then file name.
    pub val: Vec<Sample>,
    /// How the split was made.
    pub split: Split,
}

/// A dataset layout that cannot be used, naming the directory and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The root is missing or not a directory.
    #[error(
        "dataset {0} is not a directory: expected DATA/<label>/*.jpg (or DATA/train/<label>/...)"
    )]
    NotADirectory(PathBuf),
    /// No class directories.
    #[error("dataset {0} has no class directories: put each label's pictures in DATA/<label>/")]
    NoClasses(PathBuf),
    /// Only one class: nothing to tell apart.
    #[error("dataset {path} has a single class `{label}`: a classifier needs at least two labels")]
    SingleClass {
        /// The directory.
        path: PathBuf,
        /// The only label.
        label: String,
    },
    /// A class directory without any picture.
    #[error("class directory {0} holds no pictures ({exts}); add some or remove it", exts = IMAGE_EXTENSIONS.join(", "))]
    EmptyClass(PathBuf),
    /// A validation class that training does not have.
    #[error(
        "validation class {0} does not exist under train/: both splits must use the same labels"
    )]
    UnknownValClass(PathBuf),
    /// The validation fraction is out of range.
    #[error("--val-fraction must be in [0, 1), got {0}")]
    BadFraction(f64),
    /// Listing a directory failed.
    #[error("cannot list {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether a path names a picture by its extension: a format `image` knows
/// ([`image::ImageFormat::from_path`]) and this build can decode.
pub fn is_image(path: &Path) -> bool {
    image::ImageFormat::from_path(path).is_ok_and(|f| f.reading_enabled())
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()).map_err(io))
        .collect::<Result<_, _>>()?;
    entries.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    entries.sort();
    Ok(entries)
}

/// The pictures under `dir` and its subfolders, sorted by path.
fn pictures_under(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for p in list_dir(dir)? {
        if p.is_dir() {
            out.extend(pictures_under(&p)?);
        } else if p.is_file() && is_image(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Class directories of `dir` and their pictures (recursively, sorted), each class non-empty.
fn classes(dir: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>, DataError> {
    let mut out = BTreeMap::new();
    for sub in list_dir(dir)?.into_iter().filter(|p| p.is_dir()) {
        let files = pictures_under(&sub)?;
        if files.is_empty() {
            return Err(DataError::EmptyClass(sub));
        }
        let name = sub
            .file_name()
            .expect("listed entry")
            .to_string_lossy()
            .into_owned();
        out.insert(name, files);
    }
    Ok(out)
}

impl Dataset {
    /// Scan `root`. With `root/train/` present, `train/` and `val/` (or `valid/`) are used as
    /// they are (a missing one is split off `train/`; `test/` is left out); otherwise every class is split with
    /// `val_fraction` of its pictures (at least one when it has two or more) held out, seeded.
    pub fn scan(root: &Path, val_fraction: f64, seed: u64) -> Result<Dataset, DataError> {
        if !root.is_dir() {
            return Err(DataError::NotADirectory(root.to_path_buf()));
        }
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(DataError::BadFraction(val_fraction));
        }
        let train_dir = root.join("train");
        let val_dir = ["val", "valid"]
            .iter()
            .map(|n| root.join(n))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| root.join("val"));
        let (train_classes, val_classes) = if train_dir.is_dir() {
            let val = if val_dir.is_dir() {
                Some(classes(&val_dir)?)
            } else {
                None
            };
            (classes(&train_dir)?, val)
        } else {
            (classes(root)?, None)
        };
        let labels: Vec<String> = train_classes.keys().cloned().collect();
        match labels.len() {
            0 => return Err(DataError::NoClasses(root.to_path_buf())),
            1 => {
                return Err(DataError::SingleClass {
                    path: root.to_path_buf(),
                    label: labels[0].clone(),
                });
            }
            _ => {}
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        let split = match val_classes {
            Some(vc) => {
                if let Some(extra) = vc.keys().find(|k| !train_classes.contains_key(*k)) {
                    return Err(DataError::UnknownValClass(val_dir.join(extra)));
                }
                for (label, (name, files)) in train_classes.into_iter().enumerate() {
                    train.extend(files.into_iter().map(|path| Sample { path, label }));
                    if let Some(vfiles) = vc.get(&name) {
                        val.extend(vfiles.iter().cloned().map(|path| Sample { path, label }));
                    }
                }
                Split::Folders
            }
            None => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                for (label, (_, mut files)) in train_classes.into_iter().enumerate() {
                    files.shuffle(&mut rng);
                    let n = files.len();
                    let mut k = (n as f64 * val_fraction).round() as usize;
                    if val_fraction > 0.0 && n >= 2 {
                        k = k.clamp(1, n - 1);
                    }
                    let mut held: Vec<PathBuf> = files.drain(..k).collect();
                    held.sort();
                    files.sort();
                    val.extend(held.into_iter().map(|path| Sample { path, label }));
                    train.extend(files.into_iter().map(|path| Sample { path, label }));
                }
                Split::Stratified {
                    fraction: val_fraction,
                    seed,
                }
            }
        };
        Ok(Dataset {
            root: root.to_path_buf(),
            labels,
            train,
            val,
            split,
        })
    }

    /// Samples per label in a set.
    pub fn counts(&self, samples: &[Sample]) -> Vec<usize> {
        let mut c = vec![0; self.labels.len()];
        for s in samples {
            c[s.label] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn make(root: &Path, spec: &[(&str, usize)]) {
        for (label, n) in spec {
            for i in 0..*n {
                touch(&root.join(label).join(format!("{i:03}.png")));
            }
        }
    }

    #[test]
    fn stratified_split_is_seeded_sorted_and_keeps_every_class() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), &[("zebra", 20), ("apple", 10), ("mango", 2)]);
        touch(&dir.path().join("apple/notes.txt"));
        touch(&dir.path().join("apple/.hidden.png"));
        let d = Dataset::scan(dir.path(), 0.2, 7).unwrap();
        assert_eq!(d.labels, vec!["apple", "mango", "zebra"]);
        assert_eq!(d.counts(&d.val), vec![2, 1, 4]);
        assert_eq!(d.counts(&d.train), vec![8, 1, 16]);
        assert!(d.train.iter().chain(&d.val).all(|s| is_image(&s.path)));
        // Same seed, same split; another seed, another split; never overlapping.
        assert_eq!(Dataset::scan(dir.path(), 0.2, 7).unwrap(), d);
        let other = Dataset::scan(dir.path(), 0.2, 8).unwrap();
        assert_ne!(other.val, d.val);
        assert!(d.val.iter().all(|v| !d.train.contains(v)));
    }

    #[test]
    fn train_and_val_folders_are_used_as_given() {
        let dir = tempfile::tempdir().unwrap();
        make(&dir.path().join("train"), &[("cat", 5), ("dog", 4)]);
        make(&dir.path().join("val"), &[("cat", 2), ("dog", 1)]);
        let d = Dataset::scan(dir.path(), 0.15, 0).unwrap();
        assert_eq!(d.split, Split::Folders);
        assert_eq!(d.counts(&d.train), vec![5, 4]);
        assert_eq!(d.counts(&d.val), vec![2, 1]);

        make(&dir.path().join("val"), &[("bird", 1)]);
        let err = Dataset::scan(dir.path(), 0.15, 0).unwrap_err();
        assert!(matches!(err, DataError::UnknownValClass(_)), "{err}");
        assert!(err.to_string().contains("bird"));
    }

    #[test]
    fn unusable_layouts_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Dataset::scan(&dir.path().join("nope"), 0.1, 0),
            Err(DataError::NotADirectory(_))
        ));
        assert!(matches!(
            Dataset::scan(dir.path(), 0.1, 0),
            Err(DataError::NoClasses(_))
        ));
        make(dir.path(), &[("only", 3)]);
        let err = Dataset::scan(dir.path(), 0.1, 0).unwrap_err();
        assert!(err.to_string().contains("single class `only`"), "{err}");
        std::fs::create_dir_all(dir.path().join("empty")).unwrap();
        touch(&dir.path().join("empty/readme.md"));
        let err = Dataset::scan(dir.path(), 0.1, 0).unwrap_err();
        assert!(
            matches!(err, DataError::EmptyClass(ref p) if p.ends_with("empty")),
            "{err}"
        );
        assert!(matches!(
            Dataset::scan(dir.path(), 1.0, 0),
            Err(DataError::BadFraction(_))
        ));
    }

    #[test]
    fn nested_class_folders_valid_and_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        touch(&r.join("train/cat/a.jpg"));
        touch(&r.join("train/cat/indoor/b.JPEG"));
        touch(&r.join("train/cat/indoor/deeper/c.webp"));
        touch(&r.join("train/dog/d.bmp"));
        touch(&r.join("train/dog/readme.md"));
        touch(&r.join("valid/cat/e.png"));
        touch(&r.join("valid/dog/x/f.jpg"));
        let d = Dataset::scan(r, 0.2, 0).unwrap();
        assert_eq!(d.split, Split::Folders);
        assert_eq!(d.counts(&d.train), vec![3, 1]);
        assert_eq!(d.counts(&d.val), vec![1, 1]);
        assert!(d.train[1].path.ends_with("indoor/b.JPEG"));
    }
}
