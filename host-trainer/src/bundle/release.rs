//! A bundle's [`Release`]: its creation time and a sequence that only grows on this workstation,
//! which the board's anti-rollback compares.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use kestrel_shared::manifest::Release;

/// File in the config directory holding the last sequence this workstation wrote.
pub const SEQUENCE_FILE: &str = "release-sequence";

/// The release of a bundle exported now: the clock in milliseconds, raised above the last sequence
/// recorded in `state_dir` (if any; it is then updated), so a clock set back never makes a new
/// bundle look older. Failing to record is logged, not fatal: the clock alone still orders bundles.
pub fn next_release(state_dir: Option<&Path>) -> Release {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut sequence = now.as_millis() as u64;
    if let Some(dir) = state_dir {
        let path = dir.join(SEQUENCE_FILE);
        let last = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        if let Some(last) = last {
            sequence = sequence.max(last + 1);
        }
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, format!("{sequence}\n")));
        if let Err(e) = written {
            tracing::warn!(
                "cannot record the release sequence in {}: {e}",
                path.display()
            );
        }
    }
    Release {
        created: rfc3339_utc(now.as_secs()),
        sequence,
    }
}

/// `secs` since 1970 as RFC 3339 in UTC, e.g. `2026-12-04T01:30:00Z`.
pub fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_796_347_800), "2026-12-04T01:30:00Z");
        assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn the_sequence_grows_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = next_release(Some(dir.path()));
        let b = next_release(Some(dir.path()));
        assert!(b.sequence > a.sequence);
        // A recorded sequence far in the future (a clock set back since) still wins.
        std::fs::write(dir.path().join(SEQUENCE_FILE), "9999999999999\n").unwrap();
        assert_eq!(next_release(Some(dir.path())).sequence, 10_000_000_000_000);
        let recorded = std::fs::read_to_string(dir.path().join(SEQUENCE_FILE)).unwrap();
        assert_eq!(recorded.trim(), "10000000000000");
    }
}
