//! Calibration: run a float graph with its `tap.<layer>` outputs in tract over sample inputs and
//! turn what each layer's input looked like into int8 parameters.

use std::collections::BTreeMap;

use kestrel_shared::manifest::CalibrationMethod;
use prost::Message;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use super::int8::{ActivationParams, Observer};
use super::onnx_graph::{LayerQuant, QuantPlan, TAP_PREFIX};

/// Calibration failures.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// tract could not load or run the calibration graph.
    #[error("calibrating {what}: tract failed: {reason}")]
    Tract {
        /// Which graph.
        what: String,
        /// tract's explanation.
        reason: String,
    },
    /// No sample to calibrate on.
    #[error(
        "calibrating {what}: no calibration samples (the run has no readable training pictures)"
    )]
    Empty {
        /// Which graph.
        what: String,
    },
}

/// Observe every `tap.*` output of `model` (fed `items`, each one input of shape `item_shape`) and
/// return, for each tapped layer, its input's int8 parameters for `method` and the mean of each
/// input channel (for bias correction).
pub fn calibrate(
    what: &str,
    model: &ModelProto,
    item_shape: &[usize],
    items: &[Vec<f32>],
    method: CalibrationMethod,
) -> Result<QuantPlan, CalibrationError> {
    if items.is_empty() {
        return Err(CalibrationError::Empty {
            what: what.to_string(),
        });
    }
    let err = |e: TractError| CalibrationError::Tract {
        what: what.to_string(),
        reason: format!("{e:#}"),
    };
    let bytes = model.encode_to_vec();
    let mut m = tract_onnx::onnx()
        .model_for_read(&mut &*bytes)
        .map_err(err)?;
    let shape: Vec<usize> = std::iter::once(1)
        .chain(item_shape.iter().copied())
        .collect();
    m.set_input_fact(0, f32::fact(&shape).into()).map_err(err)?;
    let outputs: Vec<String> = model
        .graph
        .as_ref()
        .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
        .unwrap_or_default();
    let plan = m
        .into_optimized()
        .map_err(err)?
        .into_runnable()
        .map_err(err)?;
    let taps: Vec<(usize, String)> = outputs
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.strip_prefix(TAP_PREFIX).map(|l| (i, l.to_string())))
        .collect();
    let mut observers: BTreeMap<String, Observer> = BTreeMap::new();
    // Per layer: the sum of each input channel's mean over the items.
    let mut channel_sums: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let passes = match method {
        CalibrationMethod::MinMax => 1,
        CalibrationMethod::Percentile { .. } => 2,
    };
    for pass in 0..passes {
        for x in items {
            let input = Tensor::from_shape(&shape, x).map_err(err)?;
            let out = plan.run(tvec!(input.into_tvalue())).map_err(err)?;
            for (i, layer) in &taps {
                let v = out[*i].to_plain_array_view::<f32>().map_err(err)?;
                let values = v
                    .as_slice()
                    .map(<[f32]>::to_vec)
                    .unwrap_or_else(|| v.iter().copied().collect());
                let o = observers.entry(layer.clone()).or_default();
                if pass == 0 {
                    o.observe_range(&values);
                    // Layout [1, C, ...]: channel c is the c-th run of len / C values.
                    let c = v.shape().get(1).copied().unwrap_or(1).max(1);
                    let per = values.len() / c;
                    let sums = channel_sums
                        .entry(layer.clone())
                        .or_insert_with(|| vec![0.0; c]);
                    for (k, chunk) in values.chunks(per.max(1)).enumerate().take(c) {
                        sums[k] += chunk.iter().map(|&x| x as f64).sum::<f64>() / per as f64;
                    }
                } else {
                    o.observe_histogram(&values);
                }
            }
        }
    }
    let n = items.len() as f64;
    Ok(observers
        .into_iter()
        .map(|(layer, o)| {
            let [lo, hi] = o.range(method);
            let input_mean = channel_sums
                .remove(&layer)
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s / n) as f32)
                .collect();
            let q = LayerQuant {
                input: ActivationParams::from_range(lo, hi),
                input_mean,
            };
            (layer, q)
        })
        .collect())
}
