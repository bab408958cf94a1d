//! The book's two approaches side by side: one model with frozen layers (burn, end to end on
//! pixels) and two models (cached tract embeddings + head). Freezing must leave every trunk
//! parameter bit-identical, and both must learn the same thing.

use kestrel_e2e::weights;
use kestrel_edge::{Threads, Trunk};
use kestrel_shared::{CutPoint, PreprocessSpec};
use kestrel_trainer::classify::onemodel::train_one_model;
use kestrel_trainer::classify::{
    Examples, FitWatch, HeadKind, OptimizerKind, TrainConfig, train_head,
};
use kestrel_trainer::data::Dataset;
use kestrel_trainer::data::synth::{SynthClassify, write_classify};
use kestrel_trainer::{Backend, MobileNetV2, Pretrained};

fn trunk_parameters(m: &MobileNetV2) -> Vec<Vec<f32>> {
    let floats = |t: burn::Tensor<1>| t.into_data().try_into_vec::<f32>().unwrap();
    let mut out = Vec::new();
    for l in m.conv_layers() {
        out.push(
            l.conv
                .weight
                .val()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap(),
        );
        out.push(floats(l.bn.gamma.val()));
        out.push(floats(l.bn.beta.val()));
        out.push(floats(l.bn.running_mean.value()));
        out.push(floats(l.bn.running_var.value()));
    }
    out
}

#[test]
fn frozen_trunk_stays_bit_identical_and_both_approaches_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_classify(
        &SynthClassify {
            per_class: 6,
            size: 64,
            seed: 21,
        },
        &data,
    )
    .unwrap();
    let set = Dataset::scan(&data, 0.34, 0).unwrap();
    let spec = PreprocessSpec::imagenet();
    let load = |s: &[kestrel_trainer::data::Sample]| -> (Vec<Vec<f32>>, Vec<usize>) {
        (
            s.iter()
                .map(|x| spec.load_and_apply(&x.path).unwrap())
                .collect(),
            s.iter().map(|x| x.label).collect(),
        )
    };
    let (train_px, train_y) = load(&set.train);
    let (val_px, val_y) = load(&set.val);

    let p = Pretrained::load(&weights(), Backend::Flex).unwrap();
    let cfg = TrainConfig {
        head: HeadKind::Linear,
        optimizer: OptimizerKind::Adam,
        lr: 0.005,
        epochs: 4,
        batch_size: 8,
        seed: 1,
        patience: 0,
        lr_schedule: Default::default(),
    };

    // One model: the optimiser steps the whole network; the trunk must not move.
    let before = trunk_parameters(&p.model.clone().truncate(CutPoint::Pooled));
    let one = train_one_model(
        &p.weights,
        &cfg,
        4,
        (224, 224),
        Examples {
            train_x: &train_px,
            train_y: &train_y,
            val_x: &val_px,
            val_y: &val_y,
        },
        &p.device,
        &mut |_| {},
    )
    .unwrap();
    let after = trunk_parameters(&one.model.trunk);
    assert_eq!(before.len(), after.len());
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            b.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits()),
            "trunk tensor {i} changed"
        );
    }

    // Two models: the same pictures through the exported trunk in tract, then the same head.
    let dir = tempfile::tempdir().unwrap();
    let trunk_dir = p.cached_trunk(CutPoint::Pooled, spec, dir.path()).unwrap();
    let trunk = Trunk::open(&trunk_dir, 1, Threads::Single).unwrap();
    let train_e = trunk.embed(&train_px).unwrap();
    let val_e = trunk.embed(&val_px).unwrap();
    let two = train_head(
        &cfg,
        4,
        Examples {
            train_x: &train_e,
            train_y: &train_y,
            val_x: &val_e,
            val_y: &val_y,
        },
        &p.device,
        FitWatch::epochs(&mut |_| {}),
    )
    .unwrap();

    // Same seed, same batches, embeddings equal to 1e-4: the two runs follow the same path.
    assert_eq!(one.history.len(), two.history.len());
    for (a, b) in one.history.iter().zip(&two.history) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-3, "{a:?} vs {b:?}");
        assert!((a.val_loss - b.val_loss).abs() < 1e-3, "{a:?} vs {b:?}");
        assert_eq!(a.val_accuracy, b.val_accuracy, "{a:?} vs {b:?}");
    }
    assert!(
        two.history.last().unwrap().train_loss < two.history[0].train_loss,
        "the head learned"
    );
}
