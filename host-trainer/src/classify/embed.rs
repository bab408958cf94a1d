//! Embedding a dataset through the frozen ONNX trunk (tract), with an on-disk cache.
//!
//! Cache key: the trunk file's sha256 (which pins weights, cut and graph), the picture's content
//! sha256 and the view number (0 = the picture itself, 1.. = seeded augmented views). A second run
//! with other head settings reads every embedding from the cache and never runs the trunk.

use std::path::{Path, PathBuf};

use kestrel_edge::Trunk;
use kestrel_shared::hash::sha256_hex;
use rayon::prelude::*;

use crate::data::Sample;
use crate::data::augment::{RECIPE, augment};
use crate::progress::Progress;

/// Embeddings on disk, one little-endian f32 file per (trunk, picture, view).
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    dir: PathBuf,
}

impl EmbeddingCache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: &Path) -> Self {
        EmbeddingCache {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, trunk_sha: &str, content_sha: &str, view: u32) -> PathBuf {
        // Augmented views also name the recipe that made them.
        let name = match view {
            0 => format!("{content_sha}-v0.f32"),
            v => format!("{content_sha}-v{v}-r{RECIPE}.f32"),
        };
        // The preprocessing version too: the same picture and trunk give other numbers if the
        // pixel code changed.
        self.dir
            .join(&trunk_sha[..16])
            .join(format!(
                "p{}",
                kestrel_shared::preprocess::PREPROCESS_VERSION
            ))
            .join(&content_sha[..2])
            .join(name)
    }

    /// The cached embedding, if present and of the expected length.
    pub fn get(
        &self,
        trunk_sha: &str,
        content_sha: &str,
        view: u32,
        len: usize,
    ) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(trunk_sha, content_sha, view)).ok()?;
        (bytes.len() == 4 * len).then(|| {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    /// Store an embedding (written to a temporary file, then renamed: never half a file).
    pub fn put(
        &self,
        trunk_sha: &str,
        content_sha: &str,
        view: u32,
        v: &[f32],
    ) -> std::io::Result<()> {
        let p = self.path(trunk_sha, content_sha, view);
        std::fs::create_dir_all(p.parent().expect("cache path has a parent"))?;
        // Unique per process and call: two threads may store the same picture (duplicates).
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = p.with_extension(format!("tmp{}-{call}", std::process::id()));
        std::fs::write(
            &tmp,
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        )?;
        std::fs::rename(tmp, p)
    }
}

/// One picture's outcome: a reason to skip it, or its views' vectors (with whether each came
/// from the cache).
enum Embedded {
    Skip(String),
    Views(Vec<(Vec<f32>, bool)>),
}

/// Read, decode and embed one picture's views (cached ones are read back, new ones stored).
fn embed_one(
    trunk: &Trunk,
    cache: &EmbeddingCache,
    path: &Path,
    views: u32,
    len: usize,
) -> anyhow::Result<Embedded> {
    let trunk_sha = &trunk.info.onnx_sha256;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Ok(Embedded::Skip(format!("cannot read: {e}"))),
    };
    let content = sha256_hex(&bytes);
    let cached: Vec<Option<Vec<f32>>> = (0..=views)
        .map(|v| cache.get(trunk_sha, &content, v, len))
        .collect();
    let decoded = if cached.iter().any(Option::is_none) {
        match kestrel_shared::picture::decode(&bytes) {
            Ok(img) => Some(img.to_rgb8()),
            Err(e) => return Ok(Embedded::Skip(format!("cannot decode: {e}"))),
        }
    } else {
        None
    };
    let mut out = Vec::with_capacity(views as usize + 1);
    for (view, hit) in (0..=views).zip(cached) {
        out.push(match hit {
            Some(v) => (v, true),
            None => {
                let img = decoded.as_ref().expect("decoded when a view is missing");
                let x = if view == 0 {
                    trunk.preprocess().apply(img)
                } else {
                    trunk.preprocess().apply(&augment(img, &content, view))
                };
                let v = trunk.embed(std::slice::from_ref(&x))?.remove(0);
                cache.put(trunk_sha, &content, view, &v)?;
                (v, false)
            }
        });
    }
    Ok(Embedded::Views(out))
}

/// A picture that could not be used, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// Embeddings of a set of samples.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedSet {
    /// One embedding per usable sample.
    pub x: Vec<Vec<f32>>,
    /// Its label.
    pub y: Vec<usize>,
    /// The sample files, in the same order.
    pub paths: Vec<PathBuf>,
    /// Pictures that could not be read or decoded.
    pub skipped: Vec<Skipped>,
    /// How many embeddings came from the cache.
    pub cache_hits: usize,
}

/// Embed every sample through `trunk` (reading and filling `cache`): the picture itself and
/// `views` augmented views of it. Unreadable pictures are reported by path (a warning each) and
/// skipped, unless `strict`, where the first is an error.
pub fn embed_samples(
    trunk: &Trunk,
    samples: &[Sample],
    cache: &EmbeddingCache,
    views: u32,
    strict: bool,
    progress: &dyn Progress,
) -> anyhow::Result<EmbeddedSet> {
    let len: usize = trunk.info.output_shape.iter().skip(1).product();
    let mut set = EmbeddedSet::default();
    let bar = progress.start("embedding pictures", Some(samples.len() as u64));
    let skip = |set: &mut EmbeddedSet, path: &Path, reason: String| -> anyhow::Result<()> {
        if strict {
            anyhow::bail!("{}: {reason} (--strict)", path.display());
        }
        tracing::warn!("skipping {}: {reason}", path.display());
        set.skipped.push(Skipped {
            path: path.to_path_buf(),
            reason,
        });
        Ok(())
    };
    // Pictures are embedded in parallel (one tract run per picture and thread), a chunk at a
    // time, and merged in order: same set, same skips, same cache as one at a time.
    for chunk in samples.chunks(64) {
        let results: Vec<anyhow::Result<Embedded>> = chunk
            .par_iter()
            .map(|s| embed_one(trunk, cache, &s.path, views, len))
            .collect();
        for (s, r) in chunk.iter().zip(results) {
            bar.advance(1);
            match r? {
                Embedded::Skip(reason) => skip(&mut set, &s.path, reason)?,
                Embedded::Views(vs) => {
                    for (v, hit) in vs {
                        set.cache_hits += usize::from(hit);
                        set.x.push(v);
                        set.y.push(s.label);
                        set.paths.push(s.path.clone());
                    }
                }
            }
        }
    }
    bar.finish();
    Ok(set)
}
