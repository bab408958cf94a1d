//! Fast training ops for MobileNetV2's blocks: a 1x1 convolution and a depthwise 3x3 convolution,
//! each with a bias (the folded BatchNorm) and an optional ReLU6, forward and backward.
//!
//! burn-flex has no convolution backward of its own (burn's generic fallback runs a depthwise
//! weight gradient as one convolution per channel), which made a fine-tuning step twice as slow as
//! PyTorch's. These ops plug into burn as a backend extension ([`extension::MobileNetOps`]) with
//! their own backward, so they work under autodiff; on any other backend (or dtype) the same
//! functions fall back to burn's reference ops, which compute the same thing.

pub mod extension;
pub mod kernels;

use burn::backend::{Dispatch, DispatchDevice};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

use extension::MobileNetOps;

/// Which implementation MobileNetV2's layers use (a per-thread setting, for the bench).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsMode {
    /// The fused ops of this module (the default).
    Fused,
    /// burn's own conv2d + BatchNorm + clamp for every layer (the state before the fused ops).
    BurnOps,
    /// 1x1 convolutions as BatchNorm-folded reshape + matmul with burn's ops (whose autodiff is
    /// matmul's); depthwise layers as burn's own ops.
    BurnMatmul,
}

thread_local! {
    static MODE: std::cell::Cell<OpsMode> = const { std::cell::Cell::new(OpsMode::Fused) };
}

/// Run `f` with the layers of this thread in `mode` (the model computes the same in each).
pub fn with_mode<R>(mode: OpsMode, f: impl FnOnce() -> R) -> R {
    let before = MODE.with(|c| c.replace(mode));
    let out = f();
    MODE.with(|c| c.set(before));
    out
}

/// The implementation the layers of this thread use (see [`with_mode`]).
pub fn mode() -> OpsMode {
    MODE.with(|c| c.get())
}

/// Whether the extension handles tensors of this device and dtype (burn-flex, f32; autodiff or
/// not).
fn on_flex(x: &Tensor<4>) -> bool {
    x.dtype() == DType::F32 && matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// `act(conv1x1(x, weight) + bias)`: `x [N, Cin, H, W]`, `weight [Cout, Cin]`, `bias [Cout]`
/// -> `[N, Cout, H, W]`; `act` is ReLU6 when `relu6`, else the identity.
pub fn pointwise_conv(x: Tensor<4>, weight: Tensor<2>, bias: Tensor<1>, relu6: bool) -> Tensor<4> {
    if on_flex(&x) {
        Tensor::from_dispatch(<Dispatch as MobileNetOps>::pointwise_conv(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            relu6,
        ))
    } else {
        reference::pointwise_conv(x, weight, bias, relu6)
    }
}

/// `act(depthwise3x3(x, weight) + bias)` with padding 1: `x [N, C, H, W]`, `weight [C, 9]` (each
/// channel's 3x3 filter, row-major), `bias [C]` -> `[N, C, H', W']`, `H' = (H - 1) / stride + 1`.
pub fn depthwise_conv(
    x: Tensor<4>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    stride: usize,
    relu6: bool,
) -> Tensor<4> {
    if on_flex(&x) {
        Tensor::from_dispatch(<Dispatch as MobileNetOps>::depthwise_conv(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            stride,
            relu6,
        ))
    } else {
        reference::depthwise_conv(x, weight, bias, stride, relu6)
    }
}

/// The same ops written with burn's own `conv2d` and `clamp`: the fallback on other backends, and
/// what the tests hold the fast ops to.
pub mod reference {
    use super::*;

    fn act(y: Tensor<4>, relu6: bool) -> Tensor<4> {
        if relu6 { y.clamp(0.0, 6.0) } else { y }
    }

    /// [`super::pointwise_conv`] as burn's `conv2d`.
    pub fn pointwise_conv(
        x: Tensor<4>,
        weight: Tensor<2>,
        bias: Tensor<1>,
        relu6: bool,
    ) -> Tensor<4> {
        let [cout, cin] = weight.dims();
        let w = weight.reshape([cout, cin, 1, 1]);
        act(
            conv2d(
                x,
                w,
                Some(bias),
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ),
            relu6,
        )
    }

    /// [`super::pointwise_conv`] as a batched matrix product: `[1, Cout, Cin] x [N, Cin, H*W]`.
    pub fn pointwise_matmul(
        x: Tensor<4>,
        weight: Tensor<2>,
        bias: Tensor<1>,
        relu6: bool,
    ) -> Tensor<4> {
        let [n, cin, h, w] = x.dims();
        let [cout, _] = weight.dims();
        let y = weight
            .unsqueeze::<3>()
            .matmul(x.reshape([n, cin, h * w]))
            .add(bias.reshape([1, cout, 1]));
        act(y.reshape([n, cout, h, w]), relu6)
    }

    /// [`super::depthwise_conv`] as burn's grouped `conv2d`.
    pub fn depthwise_conv(
        x: Tensor<4>,
        weight: Tensor<2>,
        bias: Tensor<1>,
        stride: usize,
        relu6: bool,
    ) -> Tensor<4> {
        let [c, _] = weight.dims();
        let w = weight.reshape([c, 1, 3, 3]);
        act(
            conv2d(
                x,
                w,
                Some(bias),
                ConvOptions::new([stride, stride], [1, 1], [1, 1], c),
            ),
            relu6,
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::{depthwise_conv, pointwise_conv, reference};

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32")
    }

    fn random(rng: &mut ChaCha8Rng, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-scale..scale)).collect()
    }

    /// Largest difference relative to the larger of 1 and the reference's largest magnitude.
    fn assert_close(what: &str, got: &[f32], want: &[f32]) -> Result<(), TestCaseError> {
        prop_assert_eq!(got.len(), want.len(), "{} length", what);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        prop_assert!(
            err <= 2e-5 * scale,
            "{}: max abs err {} (scale {})",
            what,
            err,
            scale
        );
        Ok(())
    }

    /// An op under test: `(x, weight, bias) -> y`.
    type Op = dyn Fn(Tensor<4>, Tensor<2>, Tensor<1>) -> Tensor<4>;

    /// Output, and gradients of x, weight and bias of `sum(op(x, w, b) * r)` for a random `r`.
    fn run(
        op: &Op,
        x: &(Vec<f32>, [usize; 4]),
        w: &(Vec<f32>, [usize; 2]),
        b: &[f32],
        r_seed: u64,
        device: &Device,
    ) -> [Vec<f32>; 4] {
        let xt = Tensor::<4>::from_data(TensorData::new(x.0.clone(), x.1), device).require_grad();
        let wt = Tensor::<2>::from_data(TensorData::new(w.0.clone(), w.1), device).require_grad();
        let bt =
            Tensor::<1>::from_data(TensorData::new(b.to_vec(), [b.len()]), device).require_grad();
        let y = op(xt.clone(), wt.clone(), bt.clone());
        let dims = y.dims();
        let mut rng = ChaCha8Rng::seed_from_u64(r_seed);
        let r = random(&mut rng, dims.iter().product(), 1.0);
        let r = Tensor::<4>::from_data(TensorData::new(r, dims), device);
        let grads = (y.clone() * r).sum().backward();
        let flat = |t: Option<Tensor<2>>| {
            t.expect("gradient")
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        [
            values(y.inner()),
            values(xt.grad(&grads).expect("x gradient")),
            flat(wt.grad(&grads)),
            bt.grad(&grads)
                .expect("bias gradient")
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        ]
    }

    fn compare(
        fast: &Op,
        slow: &Op,
        x: (Vec<f32>, [usize; 4]),
        w: (Vec<f32>, [usize; 2]),
        b: Vec<f32>,
    ) -> Result<(), TestCaseError> {
        let device = Device::flex().autodiff();
        let got = run(fast, &x, &w, &b, 7, &device);
        let want = run(slow, &x, &w, &b, 7, &device);
        for (name, (g, w)) in ["output", "x grad", "weight grad", "bias grad"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_close(name, g, w)?;
        }
        // Inference (no autodiff) gives the same values.
        let plain = Device::flex();
        let xt = Tensor::<4>::from_data(TensorData::new(x.0.clone(), x.1), &plain);
        let wt = Tensor::<2>::from_data(TensorData::new(w.0.clone(), w.1), &plain);
        let bt = Tensor::<1>::from_data(TensorData::new(b.clone(), [b.len()]), &plain);
        assert_close("inference output", &values(fast(xt, wt, bt)), &want[0])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        #[test]
        fn pointwise_matches_burn_conv2d(
            n in 1usize..4, cin in 1usize..20, cout in 1usize..20, h in 1usize..9,
            w in 1usize..9, relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let x = (random(&mut rng, n * cin * h * w, 3.0), [n, cin, h, w]);
            let wt = (random(&mut rng, cout * cin, 1.0), [cout, cin]);
            let b = random(&mut rng, cout, 3.0);
            compare(
                &move |x, w, b| pointwise_conv(x, w, b, relu6),
                &move |x, w, b| reference::pointwise_conv(x, w, b, relu6),
                x, wt, b,
            )?;
        }

        #[test]
        fn depthwise_matches_burn_grouped_conv2d(
            n in 1usize..4, c in 1usize..12, h in 1usize..12, w in 1usize..12,
            stride in 1usize..3, relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let x = (random(&mut rng, n * c * h * w, 3.0), [n, c, h, w]);
            let wt = (random(&mut rng, c * 9, 1.0), [c, 9]);
            let b = random(&mut rng, c, 3.0);
            compare(
                &move |x, w, b| depthwise_conv(x, w, b, stride, relu6),
                &move |x, w, b| reference::depthwise_conv(x, w, b, stride, relu6),
                x, wt, b,
            )?;
        }
    }

    #[test]
    fn untracked_input_still_trains_weight_and_bias() {
        // The first block of phase 2 gets cached features that need no gradient.
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.5f32; 2 * 3 * 4 * 4], [2, 3, 4, 4]),
            &device,
        );
        let w = Tensor::<2>::from_data(TensorData::new(vec![0.1f32; 5 * 3], [5, 3]), &device)
            .require_grad();
        let b =
            Tensor::<1>::from_data(TensorData::new(vec![0.0f32; 5], [5]), &device).require_grad();
        let grads = pointwise_conv(x, w.clone(), b.clone(), true)
            .sum()
            .backward();
        // y = 0.15 everywhere: every pixel passes ReLU6; dL/dw = sum of x = 2 * 16 * 0.5 = 16.
        let gw = w
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(gw.iter().all(|g| (g - 16.0).abs() < 1e-4), "{gw:?}");
        let gb = b
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(gb.iter().all(|g| (g - 32.0).abs() < 1e-4), "{gb:?}");
    }
}
