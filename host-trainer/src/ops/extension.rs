//! The kernels of [`super::kernels`] as a burn backend extension: a `#[backend_extension]` trait
//! routed by burn's `Dispatch` to burn-flex (forward) and to burn-autodiff over flex (forward plus
//! a hand-written [`Backward`]), so the ops work on a training device like burn's own.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::TensorData;

use super::kernels::{self, ConvGrads, DepthwiseShape, PointwiseShape};

/// MobileNetV2's convolutions with their folded BatchNorm bias and optional ReLU6 in one op.
#[backend_extension(Flex, Autodiff)]
pub trait MobileNetOps: Backend {
    /// `act(conv1x1(x, weight) + bias)`: `x [n, cin, h, w]`, `weight [cout, cin]`, `bias [cout]`.
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu6: bool,
    ) -> FloatTensor<Self>;

    /// `act(depthwise3x3(x, weight) + bias)`, padding 1: `x [n, c, h, w]`, `weight [c, 9]`,
    /// `bias [c]`.
    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu6: bool,
    ) -> FloatTensor<Self>;
}

/// The values of a flex tensor as a contiguous `f32` slice (copied only if it is a strided view).
fn with_values<R>(t: &FloatTensor<Flex>, f: impl FnOnce(&[f32]) -> R) -> R {
    match t.as_slice::<f32>() {
        Some(v) => f(v),
        None => f(t.to_contiguous().as_slice::<f32>().expect("contiguous f32")),
    }
}

fn flex_tensor(values: Vec<f32>, shape: &[usize]) -> FloatTensor<Flex> {
    Flex::float_from_data(TensorData::new(values, shape.to_vec()), &Default::default())
}

fn pointwise_shape(
    x: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
) -> (PointwiseShape, [usize; 4]) {
    let [n, cin, h, w] = x.shape().dims::<4>();
    let [cout, wcin] = weight.shape().dims::<2>();
    assert_eq!(
        cin, wcin,
        "pointwise conv: input has {cin} channels, weight {wcin}"
    );
    (
        PointwiseShape {
            n,
            cin,
            cout,
            p: h * w,
        },
        [n, cout, h, w],
    )
}

fn depthwise_shape(
    x: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
    stride: usize,
) -> (DepthwiseShape, [usize; 4]) {
    let [n, c, h, w] = x.shape().dims::<4>();
    assert_eq!(
        weight.shape().dims::<2>(),
        [c, 9],
        "depthwise conv: weight must be [channels, 9]"
    );
    let s = DepthwiseShape { n, c, h, w, stride };
    (s, [n, c, s.ho(), s.wo()])
}

impl MobileNetOps for Flex {
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu6: bool,
    ) -> FloatTensor<Self> {
        let (s, out) = pointwise_shape(&x, &weight);
        let y = with_values(&x, |xv| {
            with_values(&weight, |wv| {
                with_values(&bias, |bv| kernels::pointwise_forward(s, xv, wv, bv, relu6))
            })
        });
        flex_tensor(y, &out)
    }

    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu6: bool,
    ) -> FloatTensor<Self> {
        let (s, out) = depthwise_shape(&x, &weight, stride);
        let y = with_values(&x, |xv| {
            with_values(&weight, |wv| {
                with_values(&bias, |bv| kernels::depthwise_forward(s, xv, wv, bv, relu6))
            })
        });
        flex_tensor(y, &out)
    }
}

/// What a convolution's backward keeps from its forward: input, weight, output (ReLU6's mask is
/// read from the output), the op's settings.
#[derive(Debug, Clone)]
pub struct ConvState {
    x: FloatTensor<Flex>,
    weight: FloatTensor<Flex>,
    y: FloatTensor<Flex>,
    stride: usize,
    relu6: bool,
}

/// Register the gradients of x, weight and bias with the parents that track them.
fn register(ops: &Ops<ConvState, 3>, grads: &mut Gradients, g: ConvGrads) {
    let [node_x, node_w, node_b] = &ops.parents;
    if let (Some(node), Some(gx)) = (node_x, g.x) {
        grads.register::<Flex>(node.id, flex_tensor(gx, ops.state.x.shape().as_slice()));
    }
    if let Some(node) = node_w {
        let shape = ops.state.weight.shape();
        grads.register::<Flex>(node.id, flex_tensor(g.weight, shape.as_slice()));
    }
    if let Some(node) = node_b {
        let len = g.bias.len();
        grads.register::<Flex>(node.id, flex_tensor(g.bias, &[len]));
    }
}

/// Backward of [`MobileNetOps::pointwise_conv`]: two matrix products and a bias sum.
#[derive(Debug)]
struct PointwiseBackward;

impl Backward<Flex, 3> for PointwiseBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = grads.consume::<Flex>(&ops.node);
        let st = &ops.state;
        let (s, _) = pointwise_shape(&st.x, &st.weight);
        let want_x = ops.parents[0].is_some();
        let g = with_values(&st.x, |x| {
            with_values(&st.weight, |w| {
                with_values(&st.y, |y| {
                    with_values(&gy, |gy| {
                        kernels::pointwise_backward(s, x, w, y, gy, st.relu6, want_x)
                    })
                })
            })
        });
        register(&ops, grads, g);
    }
}

/// Backward of [`MobileNetOps::depthwise_conv`], computed plane by plane.
#[derive(Debug)]
struct DepthwiseBackward;

impl Backward<Flex, 3> for DepthwiseBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = grads.consume::<Flex>(&ops.node);
        let st = &ops.state;
        let (s, _) = depthwise_shape(&st.x, &st.weight, st.stride);
        let want_x = ops.parents[0].is_some();
        let g = with_values(&st.x, |x| {
            with_values(&st.weight, |w| {
                with_values(&st.y, |y| {
                    with_values(&gy, |gy| {
                        kernels::depthwise_backward(s, x, w, y, gy, st.relu6, want_x)
                    })
                })
            })
        });
        register(&ops, grads, g);
    }
}

impl<C: CheckpointStrategy> MobileNetOps for Autodiff<Flex, C> {
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu6: bool,
    ) -> FloatTensor<Self> {
        match PointwiseBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
                let y = Flex::pointwise_conv(xp.clone(), wp.clone(), bias.into_primitive(), relu6);
                let state = ConvState {
                    x: xp,
                    weight: wp,
                    y: y.clone(),
                    stride: 1,
                    relu6,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::pointwise_conv(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                relu6,
            )),
        }
    }

    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu6: bool,
    ) -> FloatTensor<Self> {
        match DepthwiseBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
                let y = Flex::depthwise_conv(
                    xp.clone(),
                    wp.clone(),
                    bias.into_primitive(),
                    stride,
                    relu6,
                );
                let state = ConvState {
                    x: xp,
                    weight: wp,
                    y: y.clone(),
                    stride,
                    relu6,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::depthwise_conv(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                stride,
                relu6,
            )),
        }
    }
}
