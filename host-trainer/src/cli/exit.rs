//! `kestrel`'s exit statuses, so scripts can tell a bad dataset from a board that refused a bundle
//! from a link that failed: 0 success, 1 any other failure, 2 usage (clap), 3 bad input data, 4
//! refused by the board, 5 link failure.

use crate::data::annotations::AnnotationError;
use crate::data::folder::DataError;
use crate::deploy::DeployError;
use crate::run_config::RunConfigError;

/// Something else failed.
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap's own status).
pub const USAGE: u8 = 2;
/// Input data is unusable: a dataset, a picture, a run folder, a bundle on this machine.
pub const BAD_INPUT: u8 = 3;
/// The board refused (signature, trust list, age, validation).
pub const REFUSED: u8 = 4;
/// The link to the board failed (serial device, timeout, ssh, protocol).
pub const LINK: u8 = 5;

/// What `main` returns: success, or the error printed (with its causes) and its status.
pub fn finish(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit status for `err`, from the first typed error in its chain.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(d) = cause.downcast_ref::<DeployError>() {
            return match d {
                DeployError::Refused(_) => REFUSED,
                DeployError::Bundle { .. } => BAD_INPUT,
                DeployError::Link { .. }
                | DeployError::Timeout { .. }
                | DeployError::Transfer(_)
                | DeployError::Protocol(_)
                | DeployError::Ssh { .. }
                | DeployError::Unreachable { .. } => LINK,
            };
        }
        if cause.is::<DataError>()
            || cause.is::<AnnotationError>()
            || cause.is::<RunConfigError>()
            || cause.is::<image::ImageError>()
            || cause.is::<kestrel_shared::ManifestError>()
        {
            return BAD_INPUT;
        }
    }
    FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_first_typed_error() {
        let refused = anyhow::Error::from(DeployError::Refused("unsigned".into()));
        assert_eq!(exit_code(&refused.context("deploying b")), REFUSED);
        let link = anyhow::Error::from(DeployError::Link {
            what: "writing".into(),
            source: std::io::Error::other("gone"),
        });
        assert_eq!(exit_code(&link), LINK);
        let other = anyhow::anyhow!("something else");
        assert_eq!(exit_code(&other), FAILURE);
    }
}
