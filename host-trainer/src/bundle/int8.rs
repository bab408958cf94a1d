//! Quantization arithmetic: int8 weights per output channel (symmetric), int8 activations per
//! tensor (asymmetric, calibrated), and the range observers calibration feeds.
//!
//! A real value `r` and its code `q` are related by `r = scale * (q - zero_point)`, as in ONNX's
//! `QuantizeLinear` (round half to even, saturate to `[-128, 127]`).

use kestrel_shared::manifest::CalibrationMethod;

/// Largest weight code: weights use `[-127, 127]`, symmetric around 0.
pub const WEIGHT_MAX: f32 = 127.0;

/// Weights quantized per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// Codes, in the layout of the float weights.
    pub codes: Vec<i8>,
    /// One scale per output channel: `w = scale * code`.
    pub scales: Vec<f32>,
}

/// Quantize `w` with one symmetric scale per output channel; `channel(i)` says which channel
/// weight `i` feeds. A channel of zeros gets scale 1 (all codes 0).
pub fn quantize_weights(
    w: &[f32],
    channels: usize,
    channel: impl Fn(usize) -> usize,
) -> QuantizedWeights {
    let mut max = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let c = channel(i);
        max[c] = max[c].max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|&m| if m > 0.0 { m / WEIGHT_MAX } else { 1.0 })
        .collect();
    let codes = w
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (v / scales[channel(i)])
                .round_ties_even()
                .clamp(-WEIGHT_MAX, WEIGHT_MAX) as i8
        })
        .collect();
    QuantizedWeights { codes, scales }
}

/// Per-tensor quantization of an activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationParams {
    /// Step between codes.
    pub scale: f32,
    /// Code of the real value 0.
    pub zero_point: i8,
    /// The calibrated range the parameters were made from.
    pub range: [f32; 2],
}

impl ActivationParams {
    /// Parameters covering `[low, high]` (widened to include 0, so 0 is exact) with 256 codes.
    pub fn from_range(low: f32, high: f32) -> Self {
        let (lo, hi) = (low.min(0.0), high.max(0.0));
        if !(hi - lo).is_finite() || hi - lo <= f32::MIN_POSITIVE {
            return ActivationParams {
                scale: 1.0,
                zero_point: 0,
                range: [low, high],
            };
        }
        let scale = (hi - lo) / 255.0;
        let zero_point = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i8;
        ActivationParams {
            scale,
            zero_point,
            range: [low, high],
        }
    }

    /// The code of `x` (what `QuantizeLinear` computes).
    pub fn quantize(&self, x: f32) -> i8 {
        ((x / self.scale).round_ties_even() + self.zero_point as f32).clamp(-128.0, 127.0) as i8
    }

    /// The real value of a code.
    pub fn dequantize(&self, q: i8) -> f32 {
        self.scale * (q as i32 - self.zero_point as i32) as f32
    }
}

/// Bins of a percentile histogram.
const BINS: usize = 4096;

/// Observes the values of one tensor over the calibration set: first its range, then (for the
/// percentile rule) a histogram over that range.
#[derive(Debug, Clone)]
pub struct Observer {
    min: f32,
    max: f32,
    hist: Vec<u64>,
    count: u64,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: Vec::new(),
            count: 0,
        }
    }
}

impl Observer {
    /// First pass: widen the range to cover `values` (non-finite values are ignored).
    pub fn observe_range(&mut self, values: &[f32]) {
        for &v in values {
            if v.is_finite() {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
        }
    }

    /// Second pass: count `values` into the histogram over the range found in the first pass.
    pub fn observe_histogram(&mut self, values: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
        }
        let width = (self.max - self.min).max(f32::MIN_POSITIVE);
        for &v in values {
            if v.is_finite() {
                let b = (((v - self.min) / width) * BINS as f32) as usize;
                self.hist[b.min(BINS - 1)] += 1;
                self.count += 1;
            }
        }
    }

    /// The range by `method` (min/max as seen; percentile from the histogram, clipping
    /// `100 - p` percent at each end). An observer that saw nothing gives `[0, 0]`.
    pub fn range(&self, method: CalibrationMethod) -> [f32; 2] {
        if self.min > self.max {
            return [0.0, 0.0];
        }
        match method {
            CalibrationMethod::MinMax => [self.min, self.max],
            CalibrationMethod::Percentile { percentile } => {
                if self.count == 0 {
                    return [self.min, self.max];
                }
                let tail = ((100.0 - percentile as f64) / 100.0).clamp(0.0, 0.5);
                let width = (self.max - self.min) / BINS as f32;
                let edge = |from_low: bool| -> f32 {
                    let limit = (tail * self.count as f64).floor() as u64;
                    let mut seen = 0u64;
                    for k in 0..BINS {
                        let b = if from_low { k } else { BINS - 1 - k };
                        seen += self.hist[b];
                        if seen > limit {
                            return if from_low {
                                self.min + b as f32 * width
                            } else {
                                self.min + (b + 1) as f32 * width
                            };
                        }
                    }
                    if from_low { self.min } else { self.max }
                };
                [edge(true), edge(false).min(self.max)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_symmetric_per_channel() {
        // Two output channels of a [inputs=3, outputs=2] dense layer (channel = i % 2).
        let w = [1.0, -0.5, -2.0, 0.25, 0.5, 0.0];
        let q = quantize_weights(&w, 2, |i| i % 2);
        assert_eq!(q.scales, vec![2.0 / 127.0, 0.5 / 127.0]);
        assert_eq!(q.codes, vec![64, -127, -127, 64, 32, 0]);
        for (i, c) in q.codes.iter().enumerate() {
            let back = *c as f32 * q.scales[i % 2];
            assert!((back - w[i]).abs() <= q.scales[i % 2] / 2.0 + 1e-7);
        }
        // A dead channel does not divide by zero.
        let q = quantize_weights(&[0.0, 0.0], 1, |_| 0);
        assert_eq!((q.scales[0], q.codes[0]), (1.0, 0));
    }

    #[test]
    fn activation_range_maps_onto_all_codes_with_an_exact_zero() {
        let p = ActivationParams::from_range(-1.0, 3.0);
        assert_eq!(p.quantize(0.0), p.zero_point);
        assert_eq!(p.quantize(-1.0), -128);
        assert_eq!(p.quantize(3.0), 127);
        assert_eq!(p.quantize(100.0), 127);
        assert!((p.dequantize(p.quantize(1.234)) - 1.234).abs() <= p.scale / 2.0 + 1e-6);
        // Non-negative activations (after ReLU) start at code -128.
        let p = ActivationParams::from_range(0.5, 6.0);
        assert_eq!(p.zero_point, -128);
        assert_eq!(p.quantize(0.0), -128);
        // A constant tensor still gets a usable scale.
        let p = ActivationParams::from_range(0.0, 0.0);
        assert_eq!((p.scale, p.zero_point), (1.0, 0));
    }

    #[test]
    fn percentile_clips_outliers_that_min_max_keeps() {
        let mut o = Observer::default();
        let mut values: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        values.push(1000.0);
        o.observe_range(&values);
        o.observe_histogram(&values);
        assert_eq!(o.range(CalibrationMethod::MinMax), [0.0, 1000.0]);
        let [lo, hi] = o.range(CalibrationMethod::Percentile { percentile: 99.9 });
        assert!(lo <= 0.01, "{lo}");
        // With the outlier 1000x the bulk, the histogram resolution is 1000 / 4096 = 0.24.
        assert!((0.9..1.3).contains(&hi), "{hi}");
        assert_eq!(
            Observer::default().range(CalibrationMethod::MinMax),
            [0.0, 0.0]
        );
    }
}
