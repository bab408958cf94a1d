//! Where a training run is written, as Ultralytics users expect: `--out DIR`, else
//! `runs/<task>/<name>`, numbered (`train`, `train2`, `train3`...) so an earlier run is never
//! overwritten; an existing, non-empty `--out` is refused unless `--exist-ok`.

use std::path::{Path, PathBuf};

/// A run directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// The directory holds an earlier run.
    #[error(
        "run directory {0} already holds files (an earlier run?): pass --exist-ok to write into it, choose another --out, or leave --out out to get a new runs/<task>/<name>N"
    )]
    Exists(PathBuf),
    /// It exists but is not a directory.
    #[error("{0} exists and is not a directory: choose another --out")]
    NotADirectory(PathBuf),
    /// Every numbered name is taken (a guard against a loop, not a real limit).
    #[error("{0}: more than 9999 runs named like this: choose another --name")]
    Full(PathBuf),
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDirRequest<'a> {
    /// `--out`, if given.
    pub out: Option<&'a Path>,
    /// Where unnamed runs go (`runs`).
    pub project: &'a Path,
    /// `classify` or `detect`.
    pub task: &'a str,
    /// `--name` (`train`).
    pub name: &'a str,
    /// `--exist-ok`.
    pub exist_ok: bool,
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

/// The directory this run writes to (not created here).
pub fn choose(req: &RunDirRequest) -> Result<PathBuf, RunDirError> {
    if let Some(out) = req.out {
        if out.exists() && !out.is_dir() {
            return Err(RunDirError::NotADirectory(out.to_path_buf()));
        }
        if out.is_dir() && !is_empty_dir(out) && !req.exist_ok {
            return Err(RunDirError::Exists(out.to_path_buf()));
        }
        return Ok(out.to_path_buf());
    }
    let base = req.project.join(req.task);
    let first = base.join(req.name);
    if req.exist_ok || !first.exists() {
        return Ok(first);
    }
    (2..10_000)
        .map(|n| base.join(format!("{}{n}", req.name)))
        .find(|p| !p.exists())
        .ok_or(RunDirError::Full(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_numbered_and_an_earlier_run_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("runs");
        let req = |out: Option<&'static Path>, exist_ok| RunDirRequest {
            out,
            project: &project,
            task: "detect",
            name: "train",
            exist_ok,
        };
        let a = choose(&req(None, false)).unwrap();
        assert_eq!(a, project.join("detect/train"));
        std::fs::create_dir_all(&a).unwrap();
        let b = choose(&req(None, false)).unwrap();
        assert_eq!(b, project.join("detect/train2"));
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(
            choose(&req(None, false)).unwrap(),
            project.join("detect/train3")
        );
        assert_eq!(
            choose(&req(None, true)).unwrap(),
            a,
            "--exist-ok reuses the name"
        );

        let out = tmp.path().join("mine");
        let with_out = |exist_ok| RunDirRequest {
            out: Some(&out),
            ..req(None, exist_ok)
        };
        assert_eq!(choose(&with_out(false)).unwrap(), out, "a new directory");
        std::fs::create_dir_all(&out).unwrap();
        assert_eq!(choose(&with_out(false)).unwrap(), out, "an empty one");
        std::fs::write(out.join("history.csv"), "x").unwrap();
        let e = choose(&with_out(false)).unwrap_err();
        assert!(e.to_string().contains("--exist-ok"), "{e}");
        assert_eq!(choose(&with_out(true)).unwrap(), out);
        let file = out.join("history.csv");
        let e = choose(&RunDirRequest {
            out: Some(&file),
            ..req(None, true)
        })
        .unwrap_err();
        assert!(matches!(e, RunDirError::NotADirectory(_)), "{e}");
    }
}
