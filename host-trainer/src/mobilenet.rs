//! torchvision's MobileNetV2, in burn, loadable from `mobilenet_v2-b0353104.pth`.
//!
//! The layer list mirrors torchvision's `features.0` .. `features.18` (stem, 17 inverted residual
//! blocks, last 1x1 conv) so that a [`CutPoint`] means the same layer on both sides. BatchNorm runs
//! on its running statistics unless the model is put on an autodiff device for training.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::store::{ModuleSnapshot, PytorchStore};
use burn::tensor::{Device, Tensor, TensorData};
use kestrel_shared::CutPoint;

/// Torchvision's inverted residual settings: expansion t, output channels c, repeats n, stride s.
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Number of inverted residual blocks (`features.1` .. `features.17`).
pub const NUM_BLOCKS: usize = 17;

/// torchvision's `_make_divisible`: round channels to a multiple of 8, never losing more than 10%.
pub fn make_divisible(v: f32, divisor: usize) -> usize {
    let d = divisor as f32;
    let mut new_v = ((v + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (new_v as f32) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// Architecture options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MobileNetV2Config {
    /// Width multiplier (1.0 = torchvision's pretrained model).
    pub width: f32,
    /// ImageNet classes of the classifier.
    pub num_classes: usize,
}

impl Default for MobileNetV2Config {
    fn default() -> Self {
        MobileNetV2Config {
            width: 1.0,
            num_classes: 1000,
        }
    }
}

/// Convolution, BatchNorm, and optionally ReLU6: torchvision's `Conv2dNormActivation`.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// Convolution without bias (the BatchNorm supplies it).
    pub conv: Conv2d,
    /// Normalisation.
    pub bn: BatchNorm,
    /// Whether ReLU6 follows (false for the linear bottleneck projection).
    pub relu6: bool,
}

impl ConvBn {
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        relu6: bool,
        device: &Device,
    ) -> Self {
        let pad = (k - 1) / 2;
        ConvBn {
            conv: Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_groups(groups)
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(cout).with_epsilon(1e-5).init(device),
            relu6,
        }
    }

    /// `[N, Cin, H, W] -> [N, Cout, H/stride, W/stride]`
    ///
    /// With BatchNorm on its running statistics (inference, or phase 2's frozen statistics) a 1x1
    /// or depthwise 3x3 layer runs as one fused op ([`crate::ops`]): BatchNorm folded into the
    /// convolution's weight and bias (gamma and beta still get their gradients through the fold),
    /// ReLU6 applied in the same pass. Other layers, and BatchNorm on batch statistics, run as
    /// burn's conv2d + BatchNorm + clamp.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let batch_stats = x.device().is_autodiff() && self.bn.training.is_enabled();
        use crate::ops::OpsMode;
        match (batch_stats, self.fused_kind(), crate::ops::mode()) {
            (false, Some(kind), OpsMode::Fused) => self.forward_fused(x, kind),
            (false, Some(FusedKind::Pointwise), OpsMode::BurnMatmul) => {
                let (w, b) = self.folded(&x.device());
                crate::ops::reference::pointwise_matmul(x, w, b, self.relu6)
            }
            _ => {
                let x = self.bn.forward(self.conv.forward(x));
                if self.relu6 { x.clamp(0.0, 6.0) } else { x }
            }
        }
    }

    /// Which fused op this layer's convolution fits, if any.
    fn fused_kind(&self) -> Option<FusedKind> {
        let c = &self.conv;
        let [cout, cin_g, kh, kw] = c.weight.dims();
        if c.bias.is_some() || c.dilation != [1, 1] {
            return None;
        }
        let padding = |p: usize| matches!(c.padding, PaddingConfig2d::Explicit(t, l, b, r) if [t, l, b, r] == [p; 4]);
        if [kh, kw] == [1, 1] && c.groups == 1 && c.stride == [1, 1] && padding(0) {
            return Some(FusedKind::Pointwise);
        }
        let square = c.stride[0] == c.stride[1];
        if [kh, kw] == [3, 3] && cin_g == 1 && c.groups == cout && square && padding(1) {
            return Some(FusedKind::Depthwise(c.stride[0]));
        }
        None
    }

    /// The convolution with BatchNorm (running statistics) folded in: weight `[Cout, rest]`
    /// scaled by `gamma / sqrt(var + eps)`, and the bias `beta - mean * scale`.
    fn folded(&self, device: &Device) -> (Tensor<2>, Tensor<1>) {
        let bn = &self.bn;
        let mean = bn.running_mean.value().to_device(device);
        let var = bn.running_var.value().to_device(device);
        let scale = bn.gamma.val() / var.add_scalar(bn.epsilon).sqrt();
        let bias = bn.beta.val() - mean * scale.clone();
        let [cout, cin_g, kh, kw] = self.conv.weight.dims();
        let w = self.conv.weight.val().reshape([cout, cin_g * kh * kw]);
        (w * scale.unsqueeze_dim(1), bias)
    }

    fn forward_fused(&self, x: Tensor<4>, kind: FusedKind) -> Tensor<4> {
        let (w, b) = self.folded(&x.device());
        match kind {
            FusedKind::Pointwise => crate::ops::pointwise_conv(x, w, b, self.relu6),
            FusedKind::Depthwise(stride) => crate::ops::depthwise_conv(x, w, b, stride, self.relu6),
        }
    }
}

/// The fused ops a [`ConvBn`] can run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FusedKind {
    /// 1x1, stride 1, no padding.
    Pointwise,
    /// Depthwise 3x3, padding 1, this stride.
    Depthwise(usize),
}

/// MobileNetV2's inverted residual block: expand (1x1), depthwise (3x3), project (1x1, linear).
#[derive(Module, Debug)]
pub struct InvertedResidual {
    /// 1x1 expansion (absent when the expansion factor is 1).
    pub expand: Option<ConvBn>,
    /// 3x3 depthwise convolution.
    pub depthwise: ConvBn,
    /// 1x1 linear projection.
    pub project: ConvBn,
    /// Whether the input is added to the output (stride 1 and same channels).
    pub residual: bool,
}

impl InvertedResidual {
    fn new(cin: usize, cout: usize, stride: usize, t: usize, device: &Device) -> Self {
        let hidden = cin * t;
        InvertedResidual {
            expand: (t != 1).then(|| ConvBn::new(cin, hidden, 1, 1, 1, true, device)),
            depthwise: ConvBn::new(hidden, hidden, 3, stride, hidden, true, device),
            project: ConvBn::new(hidden, cout, 1, 1, 1, false, device),
            residual: stride == 1 && cin == cout,
        }
    }

    /// `[N, Cin, H, W] -> [N, Cout, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = expand.forward(y);
        }
        let y = self.project.forward(self.depthwise.forward(y));
        if self.residual { x + y } else { y }
    }
}

/// MobileNetV2, possibly cut: layers after the cut point are absent, not merely skipped.
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    /// `features.0`: 3x3 stride-2 convolution.
    pub stem: ConvBn,
    /// `features.1` .. `features.17` (fewer when cut earlier).
    pub blocks: Vec<InvertedResidual>,
    /// `features.18`: 1x1 convolution to 1280 channels (absent when cut earlier).
    pub last: Option<ConvBn>,
    /// ImageNet classifier after global pooling (absent in a trunk).
    pub classifier: Option<Linear>,
    /// Whether the output is globally pooled (the `pooled` cut and the full classifier).
    pub pooled: bool,
}

/// A failure to build or load the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The weights file could not be read as a PyTorch checkpoint.
    #[error("cannot load MobileNetV2 weights from {path}: {reason}")]
    Load {
        /// The weights file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The checkpoint does not fit the architecture.
    #[error(
        "weights {path} do not fit MobileNetV2 (width {width}): missing {missing:?}, errors {errors:?}"
    )]
    Mismatch {
        /// The weights file.
        path: String,
        /// Width multiplier asked for.
        width: f32,
        /// Parameters the checkpoint lacks.
        missing: Vec<String>,
        /// Shape or type errors.
        errors: Vec<String>,
    },
}

impl MobileNetV2Config {
    /// Build the full network with fresh (random) parameters on `device`.
    pub fn init(&self, device: &Device) -> MobileNetV2 {
        let mut cin = make_divisible(32.0 * self.width, 8);
        let last_channels = make_divisible(1280.0 * self.width.max(1.0), 8);
        let stem = ConvBn::new(3, cin, 3, 2, 1, true, device);
        let mut blocks = Vec::with_capacity(NUM_BLOCKS);
        for (t, c, n, s) in SETTINGS {
            let cout = make_divisible(c as f32 * self.width, 8);
            for i in 0..n {
                blocks.push(InvertedResidual::new(
                    cin,
                    cout,
                    if i == 0 { s } else { 1 },
                    t,
                    device,
                ));
                cin = cout;
            }
        }
        MobileNetV2 {
            stem,
            blocks,
            last: Some(ConvBn::new(cin, last_channels, 1, 1, 1, true, device)),
            classifier: Some(LinearConfig::new(last_channels, self.num_classes).init(device)),
            pooled: true,
        }
    }

    /// Build the network and load torchvision's checkpoint into it (all parameters must load).
    pub fn load(&self, weights: &Path, device: &Device) -> Result<MobileNetV2, ModelError> {
        let mut model = self.init(device);
        let path = weights.display().to_string();
        let mut store = torchvision_key_mapping(PytorchStore::from_file(weights))
            .map_indices_contiguous(false)
            .allow_partial(true);
        let result = model.load_from(&mut store).map_err(|e| ModelError::Load {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if !result.missing.is_empty() || !result.errors.is_empty() {
            return Err(ModelError::Mismatch {
                path,
                width: self.width,
                missing: result.missing.into_iter().map(|(p, _)| p).collect(),
                errors: result.errors.iter().map(|e| format!("{e:?}")).collect(),
            });
        }
        tracing::debug!(
            applied = result.applied.len(),
            unused = result.unused.len(),
            "loaded MobileNetV2 weights from {path}"
        );
        Ok(model)
    }
}

/// Rename torchvision's `features.N...` keys to this module's field names.
fn torchvision_key_mapping(mut store: PytorchStore) -> PytorchStore {
    store = store
        .with_key_remapping(r"^features\.0\.0\.", "stem.conv.")
        .with_key_remapping(r"^features\.0\.1\.", "stem.bn.")
        .with_key_remapping(r"^features\.18\.0\.", "last.conv.")
        .with_key_remapping(r"^features\.18\.1\.", "last.bn.")
        .with_key_remapping(r"^classifier\.1\.", "classifier.");
    // Block 1 has no expansion, so its sub-layer indices are shifted by one.
    let b = "blocks.0";
    store = store
        .with_key_remapping(
            r"^features\.1\.conv\.0\.0\.",
            format!("{b}.depthwise.conv."),
        )
        .with_key_remapping(r"^features\.1\.conv\.0\.1\.", format!("{b}.depthwise.bn."))
        .with_key_remapping(r"^features\.1\.conv\.1\.", format!("{b}.project.conv."))
        .with_key_remapping(r"^features\.1\.conv\.2\.", format!("{b}.project.bn."));
    for n in 2..=NUM_BLOCKS {
        let b = format!("blocks.{}", n - 1);
        for (from, to) in [
            ("conv.0.0", "expand.conv"),
            ("conv.0.1", "expand.bn"),
            ("conv.1.0", "depthwise.conv"),
            ("conv.1.1", "depthwise.bn"),
            ("conv.2", "project.conv"),
            ("conv.3", "project.bn"),
        ] {
            let from = from.replace('.', r"\.");
            store = store
                .with_key_remapping(format!(r"^features\.{n}\.{from}\."), format!("{b}.{to}."));
        }
    }
    store
}

impl MobileNetV2 {
    /// Keep only what runs up to `cut`; everything after it is dropped.
    pub fn truncate(mut self, cut: CutPoint) -> Self {
        match cut {
            CutPoint::Features(n) => {
                self.blocks.truncate((n as usize).min(NUM_BLOCKS));
                if (n as usize) <= NUM_BLOCKS {
                    self.last = None;
                }
                self.classifier = None;
                self.pooled = false;
            }
            CutPoint::Pooled => {
                self.classifier = None;
                self.pooled = true;
            }
        }
        self
    }

    /// A frozen trunk: cut at `cut`, every parameter excluded from gradients and every BatchNorm
    /// on its running statistics, even on a training (autodiff) device.
    pub fn frozen_trunk(self, cut: CutPoint) -> Self {
        self.truncate(cut).freeze()
    }

    /// Every convolution + BatchNorm layer, in execution order.
    pub fn conv_layers(&self) -> Vec<&ConvBn> {
        let mut layers = vec![&self.stem];
        for b in &self.blocks {
            layers.extend(b.expand.iter());
            layers.push(&b.depthwise);
            layers.push(&b.project);
        }
        layers.extend(self.last.iter());
        layers
    }

    /// The cut point this (possibly truncated) model ends at, or None for the full classifier.
    pub fn cut(&self) -> Option<CutPoint> {
        match (&self.last, &self.classifier, self.pooled) {
            (_, Some(_), _) => None,
            (Some(_), None, true) => Some(CutPoint::Pooled),
            (Some(_), None, false) => Some(CutPoint::Features(18)),
            (None, _, _) => Some(CutPoint::Features(self.blocks.len() as u8)),
        }
    }

    /// Run the feature layers: `[N, 3, H, W] -> [N, C, H/s, W/s]` at the truncation point.
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.stem.forward(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        if let Some(last) = &self.last {
            x = last.forward(x);
        }
        x
    }

    /// Global average pooling: `[N, C, H, W] -> [N, C]`.
    pub fn pool(x: Tensor<4>) -> Tensor<2> {
        let [n, c, _, _] = x.dims();
        x.mean_dims(&[2, 3]).reshape([n, c])
    }

    /// Everything the model has: a feature map (cut at `features.N`), `[N, 1280]` (pooled) or
    /// `[N, 1000]` logits (full model), flattened to `[N, rest]` together with its full shape.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Vec<usize>) {
        let f = self.features(x);
        if !self.pooled {
            let dims = f.dims().to_vec();
            let n = dims[0];
            return (f.reshape([n as i32, -1]), dims);
        }
        let p = Self::pool(f);
        let p = match &self.classifier {
            Some(c) => c.forward(p),
            None => p,
        };
        let dims = p.dims().to_vec();
        (p, dims)
    }

    /// Run on a batch given as flat CHW floats (`n` images of `h` x `w`) and return flat outputs.
    pub fn run(
        &self,
        input: Vec<f32>,
        n: usize,
        h: usize,
        w: usize,
        device: &Device,
    ) -> (Vec<f32>, Vec<usize>) {
        let x = Tensor::<4>::from_data(TensorData::new(input, [n, 3, h, w]), device);
        let (y, shape) = self.forward(x);
        let data = y.into_data().try_into_vec::<f32>().expect("float output");
        (data, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        assert_eq!(make_divisible(32.0, 8), 32);
        assert_eq!(make_divisible(32.0 * 0.35, 8), 16);
        assert_eq!(make_divisible(1280.0, 8), 1280);
        assert_eq!(make_divisible(24.0 * 0.75, 8), 24);
        assert_eq!(make_divisible(3.0, 8), 8);
    }

    #[test]
    fn shapes_and_parameter_count_follow_torchvision() {
        let device = Device::flex();
        let model = MobileNetV2Config::default().init(&device);
        // torchvision: sum(p.numel() for p in mobilenet_v2().parameters()) == 3,504,872; burn also
        // counts the BatchNorm running mean and variance (17,056 channels x 2 = 34,112).
        assert_eq!(model.num_params(), 3_504_872 + 34_112);
        assert_eq!(model.blocks.len(), NUM_BLOCKS);
        assert_eq!(model.cut(), None);
        let model = model.truncate(CutPoint::Features(13));
        assert_eq!(model.cut(), Some(CutPoint::Features(13)));
        let (_, shape) = model.run(vec![0.1; 3 * 64 * 64], 1, 64, 64, &device);
        assert_eq!(shape, vec![1, 96, 4, 4]);
    }

    #[test]
    fn every_cut_has_the_advertised_shape() {
        let device = Device::flex();
        let full = MobileNetV2Config::default().init(&device);
        for n in 0..=18u8 {
            let cut = CutPoint::Features(n);
            let m = full.clone().truncate(cut);
            assert_eq!(m.cut(), Some(cut));
            let (_, shape) = m.run(vec![0.0; 3 * 32 * 32], 1, 32, 32, &device);
            assert_eq!(shape, cut.output_shape(32, 32), "{cut}");
        }
        let m = full.truncate(CutPoint::Pooled);
        let (_, shape) = m.run(vec![0.0; 2 * 3 * 32 * 32], 2, 32, 32, &device);
        assert_eq!(shape, vec![2, 1280]);
    }

    /// A layer with random weights and BatchNorm statistics far from the identity, on `device`,
    /// BatchNorm on its running statistics (as in phase 2).
    fn random_layer(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        relu6: bool,
        seed: u64,
    ) -> ConvBn {
        use burn::module::{Param, RunningState};
        use rand::{Rng, SeedableRng};
        let device = Device::flex();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut t1 = |lo: f32, hi: f32| {
            let v: Vec<f32> = (0..cout).map(|_| rng.random_range(lo..hi)).collect();
            Tensor::<1>::from_data(TensorData::new(v, [cout]), &device)
        };
        let mut layer = ConvBn::new(cin, cout, k, stride, groups, relu6, &device);
        layer.bn.gamma = Param::from_tensor(t1(0.5, 2.0));
        layer.bn.beta = Param::from_tensor(t1(-1.0, 1.0));
        layer.bn.running_mean = RunningState::new(t1(-0.5, 0.5));
        layer.bn.running_var = RunningState::new(t1(0.2, 3.0));
        let ad = device.autodiff();
        crate::classify::finetune::prepare_layer(layer, &ad)
    }

    /// Output and the gradients of the conv weight, gamma and beta of `sum(layer(x) * x')`.
    fn output_and_grads(layer: &ConvBn, x: &Tensor<4>) -> Vec<Vec<f32>> {
        let y = layer.forward(x.clone());
        let r = y.clone().detach().cos();
        let grads = (y.clone() * r).sum().backward();
        let v = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        vec![
            y.inner().into_data().try_to_vec::<f32>().unwrap(),
            v(layer.conv.weight.grad(&grads).unwrap().flatten(0, 3)),
            v(layer.bn.gamma.grad(&grads).unwrap()),
            v(layer.bn.beta.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn fused_layers_compute_what_burns_layers_compute() {
        let cases = [
            // (cin, cout, kernel, stride, groups, relu6): expand, project, depthwise s1 and s2.
            (8, 24, 1, 1, 1, true),
            (24, 8, 1, 1, 1, false),
            (16, 16, 3, 1, 16, true),
            (16, 16, 3, 2, 16, true),
        ];
        for (i, &(cin, cout, k, stride, groups, relu6)) in cases.iter().enumerate() {
            let layer = random_layer(cin, cout, k, stride, groups, relu6, i as u64);
            assert!(layer.fused_kind().is_some(), "case {i} runs fused");
            let device = Device::flex().autodiff();
            let x = Tensor::<4>::random(
                [3, cin, 9, 9],
                burn::tensor::Distribution::Normal(0.0, 2.0),
                &device,
            );
            let fused = output_and_grads(&layer, &x);
            let burn = crate::ops::with_mode(crate::ops::OpsMode::BurnOps, || {
                output_and_grads(&layer, &x)
            });
            for (what, (f, b)) in ["output", "weight grad", "gamma grad", "beta grad"]
                .iter()
                .zip(fused.iter().zip(&burn))
            {
                let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
                let err = f.iter().zip(b).fold(0f32, |m, (f, b)| m.max((f - b).abs()));
                assert!(
                    err <= 1e-4 * scale,
                    "case {i} {what}: err {err}, scale {scale}"
                );
            }
        }
    }

    #[test]
    fn width_multiplier_changes_channels() {
        let device = Device::flex();
        let m = MobileNetV2Config {
            width: 0.5,
            num_classes: 10,
        }
        .init(&device);
        let (_, shape) = m.run(vec![0.0; 3 * 32 * 32], 1, 32, 32, &device);
        assert_eq!(shape, vec![1, 10]);
        assert!(m.num_params() < 3_504_872 / 2);
    }
}
