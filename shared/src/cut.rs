//! Where the pretrained MobileNetV2 is cut into a frozen trunk.
//!
//! torchvision names the layers `features.0` .. `features.18`; Kestrel keeps those names so a cut
//! point reads the same in a manifest, on the command line and in a PyTorch notebook.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Index of the last `features.N` layer of MobileNetV2.
pub const LAST_FEATURE: u8 = 18;

/// A point at which the trunk stops: after `features.N`, or the pooled 1280-vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum CutPoint {
    /// The feature map right after `features.N` (N = 0..=18), NCHW.
    Features(u8),
    /// Global average of `features.18`: one 1280-vector per image (the book's embedding).
    Pooled,
}

/// Named presets, as they appear in manifests and on the command line.
pub const PRESETS: &[(&str, CutPoint)] = &[
    ("stride8", CutPoint::Features(6)),
    ("stride16", CutPoint::Features(13)),
    ("stride32", CutPoint::Features(18)),
    ("pooled", CutPoint::Pooled),
];

/// Output channels and stride of every `features.N` of MobileNetV2 at width 1.0.
const FEATURE_SHAPES: [(usize, usize); 19] = [
    (32, 2),
    (16, 2),
    (24, 4),
    (24, 4),
    (32, 8),
    (32, 8),
    (32, 8),
    (64, 16),
    (64, 16),
    (64, 16),
    (64, 16),
    (96, 16),
    (96, 16),
    (96, 16),
    (160, 32),
    (160, 32),
    (160, 32),
    (320, 32),
    (1280, 32),
];

impl CutPoint {
    /// Index of the last `features.N` layer that runs for this cut.
    pub fn last_feature(self) -> u8 {
        match self {
            CutPoint::Features(n) => n,
            CutPoint::Pooled => LAST_FEATURE,
        }
    }

    /// Spatial stride of the output (the pooled vector has none: it returns 0).
    pub fn stride(self) -> usize {
        match self {
            CutPoint::Features(n) => FEATURE_SHAPES[n as usize].1,
            CutPoint::Pooled => 0,
        }
    }

    /// Output channels at width multiplier 1.0.
    pub fn channels(self) -> usize {
        FEATURE_SHAPES[self.last_feature() as usize].0
    }

    /// Output shape for one image of `height` x `width` at width multiplier 1.0.
    pub fn output_shape(self, height: usize, width: usize) -> Vec<usize> {
        match self {
            CutPoint::Pooled => vec![1, self.channels()],
            CutPoint::Features(_) => {
                let s = self.stride();
                vec![1, self.channels(), height.div_ceil(s), width.div_ceil(s)]
            }
        }
    }
}

impl fmt::Display for CutPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CutPoint::Features(n) => write!(f, "features.{n}"),
            CutPoint::Pooled => f.write_str("pooled"),
        }
    }
}

/// A cut point that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown cut point `{0}`: use features.0 .. features.18, or one of stride8, stride16, stride32, pooled"
)]
pub struct ParseCutError(pub String);

impl FromStr for CutPoint {
    type Err = ParseCutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some((_, cut)) = PRESETS.iter().find(|(name, _)| *name == t) {
            return Ok(*cut);
        }
        t.strip_prefix("features.")
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|n| *n <= LAST_FEATURE)
            .map(CutPoint::Features)
            .ok_or_else(|| ParseCutError(s.to_string()))
    }
}

impl From<CutPoint> for String {
    fn from(c: CutPoint) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for CutPoint {
    type Error = ParseCutError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_presets_and_round_trips() {
        assert_eq!("stride16".parse::<CutPoint>(), Ok(CutPoint::Features(13)));
        assert_eq!("features.0".parse::<CutPoint>(), Ok(CutPoint::Features(0)));
        assert_eq!("pooled".parse::<CutPoint>(), Ok(CutPoint::Pooled));
        for n in 0..=LAST_FEATURE {
            let c = CutPoint::Features(n);
            assert_eq!(c.to_string().parse::<CutPoint>(), Ok(c));
        }
        let json = serde_json::to_string(&CutPoint::Features(6)).unwrap();
        assert_eq!(json, "\"features.6\"");
        assert_eq!(
            serde_json::from_str::<CutPoint>(&json).unwrap(),
            CutPoint::Features(6)
        );
    }

    #[test]
    fn rejects_out_of_range_and_garbage() {
        for bad in [
            "features.19",
            "features.-1",
            "features.",
            "stride4",
            "",
            "pool",
        ] {
            let err = bad.parse::<CutPoint>().unwrap_err();
            assert!(err.to_string().contains("features.0 .. features.18"));
        }
        assert!(serde_json::from_str::<CutPoint>("\"features.42\"").is_err());
    }

    #[test]
    fn shapes_follow_torchvision() {
        assert_eq!(
            CutPoint::Features(13).output_shape(224, 224),
            vec![1, 96, 14, 14]
        );
        assert_eq!(
            CutPoint::Features(6).output_shape(224, 224),
            vec![1, 32, 28, 28]
        );
        assert_eq!(CutPoint::Pooled.output_shape(224, 224), vec![1, 1280]);
        assert_eq!(
            CutPoint::Features(0).output_shape(240, 320),
            vec![1, 32, 120, 160]
        );
    }
}
