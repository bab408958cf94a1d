//! Bundles in tract's own format (NNEF): the board reads them without tract's ONNX front-end.
//!
//! `kestrel export` writes each model twice: ONNX for other runtimes and NNEF for the board.
//! tract's NNEF writer has no serializer for the element-wise quantize and dequantize operators
//! ONNX's QDQ graphs become in tract; the [`registry`] adds them through tract-nnef's extension
//! point (a registry of dumpers and loaders), with their exact parameters, so an int8 bundle reads
//! back into the very graph the ONNX file gives.

use tract_nnef::internal::*;
use tract_nnef::ser::{invocation, numeric};
use tract_nnef::tract_core::ops::element_wise::ElementWiseOp;
use tract_nnef::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

/// Name of Kestrel's NNEF extension registry (`extension tract_registry kestrel` in graph.nnef).
pub const REGISTRY: &str = "kestrel";

/// tract's NNEF framework with Kestrel's registry: the one reader and writer of bundle models.
pub fn nnef() -> tract_nnef::framework::Nnef {
    tract_nnef::nnef().with_registry(registry())
}

/// The NNEF archive (`.nnef.tar`) of an ONNX model: the same graph, as tract types it (the
/// batch dimension stays symbolic). Deterministic: the same ONNX bytes give the same archive
/// (fixed timestamps), so a trunk exported twice has one hash and travels to a board once.
#[cfg(feature = "onnx")]
pub fn onnx_to_nnef(onnx: &[u8]) -> TractResult<Vec<u8>> {
    use tract_onnx::prelude::{Framework, InferenceModelExt};
    let typed = tract_onnx::onnx()
        .model_for_read(&mut &*onnx)?
        .into_typed()?;
    nnef().write_to_tar_with_config(&typed, Vec::new(), false, true)
}

/// Serializers and loaders for the quantization operators tract's NNEF writer lacks.
pub fn registry() -> Registry {
    let mut r = Registry::new(REGISTRY)
        .with_doc("Kestrel: ONNX QuantizeLinear / DequantizeLinear as tract runs them.");
    let params = || {
        vec![
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.named("scale"),
            TypeName::Integer.named("zero_point"),
        ]
    };
    r.register_element_wise(
        "kestrel_quantize_linear_i8",
        std::any::TypeId::of::<QuantizeLinearI8>(),
        Box::new(|ast, node| {
            let op = mini::<QuantizeLinearI8>(node)?;
            dump(
                ast,
                node,
                "kestrel_quantize_linear_i8",
                op.scale,
                op.zero_point as i64,
            )
        }),
        params(),
        |builder, inv| {
            let (input, scale, zero_point) = args(builder, inv)?;
            let zero_point = i8::try_from(zero_point)?;
            builder.wire(
                ElementWiseOp(Box::new(QuantizeLinearI8 { scale, zero_point }), None),
                &[input],
            )
        },
    );
    r.register_element_wise(
        "kestrel_quantize_linear_u8",
        std::any::TypeId::of::<QuantizeLinearU8>(),
        Box::new(|ast, node| {
            let op = mini::<QuantizeLinearU8>(node)?;
            dump(
                ast,
                node,
                "kestrel_quantize_linear_u8",
                op.scale,
                op.zero_point as i64,
            )
        }),
        params(),
        |builder, inv| {
            let (input, scale, zero_point) = args(builder, inv)?;
            let zero_point = u8::try_from(zero_point)?;
            builder.wire(
                ElementWiseOp(Box::new(QuantizeLinearU8 { scale, zero_point }), None),
                &[input],
            )
        },
    );
    r.register_dumper::<DequantizeLinearF32>(|ast, node, op| {
        dump(
            ast,
            node,
            "kestrel_dequantize_linear_f32",
            op.scale,
            op.zero_point as i64,
        )
    });
    r.register_primitive(
        "kestrel_dequantize_linear_f32",
        &params(),
        &[("output", TypeName::Scalar.tensor())],
        |builder, inv| {
            let (input, scale, zero_point) = args(builder, inv)?;
            let zero_point = i32::try_from(zero_point)?;
            builder.wire(DequantizeLinearF32 { scale, zero_point }, &[input])
        },
    );
    r
}

/// The mini-op inside an element-wise node.
fn mini<O: ElementWiseMiniOp>(node: &TypedNode) -> TractResult<&O> {
    node.op_as::<ElementWiseOp>()
        .and_then(|e| e.0.downcast_ref::<O>())
        .with_context(|| format!("{node} is not the element-wise op its dumper was chosen for"))
}

/// One invocation `id(input, scale = .., zero_point = ..)`.
fn dump(
    ast: &mut IntoAst,
    node: &TypedNode,
    id: &str,
    scale: f32,
    zero_point: i64,
) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation(
        id,
        &[input],
        &[
            ("scale", numeric(scale)),
            ("zero_point", numeric(zero_point)),
        ],
    )))
}

/// The three arguments every quantization invocation has.
fn args(builder: &mut ModelBuilder, inv: &ResolvedInvocation) -> TractResult<(OutletId, f32, i64)> {
    let input = inv.named_arg_as(builder, "input")?;
    let scale = inv.named_arg_as(builder, "scale")?;
    let zero_point = inv.named_arg_as(builder, "zero_point")?;
    Ok((input, scale, zero_point))
}
