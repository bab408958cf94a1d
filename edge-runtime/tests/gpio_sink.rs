//! The GPIO indicator sink against embedded-hal-mock pins: the exact pin writes for a replayed
//! sequence of results (hold time on the source clock, no flicker, no redundant writes), pin
//! errors as sink errors, and the errors of opening a real line.

#[cfg(target_os = "linux")]
use std::path::Path;

use embedded_hal_mock::eh1::MockError;
use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
use image::RgbImage;
use kestrel_edge::sink::{Classification, FrameResult, LabeledDetection, Sink, SinkError};
#[cfg(target_os = "linux")]
use kestrel_edge::sinks::open_cdev;
use kestrel_edge::sinks::{Indicator, IndicatorConfig, LabelIndicator, PinIndicator};
use kestrel_edge::stats::StatsSnapshot;
use kestrel_shared::BBox;

fn config() -> IndicatorConfig {
    IndicatorConfig {
        label: "person".into(),
        min_score: 0.5,
        hold_ms: 500.0,
    }
}

fn frame(frame: u64, source_ms: f64, dets: &[(&str, f32)]) -> FrameResult {
    FrameResult {
        timestamp_ms: 0,
        source_ms,
        frame,
        width: 64,
        height: 48,
        detections: dets
            .iter()
            .map(|&(label, score)| LabeledDetection {
                label: label.into(),
                class: 0,
                score,
                bbox: BBox::new(1.0, 1.0, 10.0, 10.0),
            })
            .collect(),
        classification: None,
        inference_ms: 1.0,
    }
}

/// Feed `frames` and return, per frame, whether the indicator is on afterwards.
fn run<I: Indicator>(sink: &mut LabelIndicator<I>, frames: &[FrameResult]) -> Vec<bool> {
    let img = RgbImage::new(1, 1);
    let stats = StatsSnapshot::default();
    frames
        .iter()
        .map(|f| {
            sink.handle(f, &img, &stats).unwrap();
            sink.is_on()
        })
        .collect()
}

#[test]
fn on_when_seen_held_through_short_gaps_off_after_hold() {
    // Exactly these writes, in order: low at start, high once, low once, high again, low at
    // close. Any redundant write (or a flicker) breaks the sequence.
    let mut pin = Mock::new(&[
        Transaction::set(State::Low),
        Transaction::set(State::High),
        Transaction::set(State::Low),
        Transaction::set(State::High),
        Transaction::set(State::Low),
    ]);
    let mut sink = LabelIndicator::new(PinIndicator(pin.clone()), config()).unwrap();
    // 10 fps on the source clock; the machine's speed is irrelevant.
    let frames = [
        frame(0, 0.0, &[]),                                // off
        frame(1, 100.0, &[("person", 0.4)]),               // below min_score: off
        frame(2, 200.0, &[("dog", 0.99)]),                 // other label: off
        frame(3, 300.0, &[("dog", 0.9), ("person", 0.8)]), // on
        frame(4, 400.0, &[("person", 0.7)]),               // on (no write)
        frame(5, 500.0, &[]),                              // short gap: held
        frame(6, 600.0, &[("person", 0.2)]),               // weak: still a gap, held
        frame(8, 800.0, &[]),                              // 400 ms since 400: held
        frame(9, 899.0, &[]),                              // 499 ms: held
        frame(10, 900.0, &[]),                             // 500 ms: off
        frame(11, 1000.0, &[]),                            // off (no write)
        frame(30, 3000.0, &[("person", 0.5)]),             // exactly min_score: on
        frame(31, 3100.0, &[]),                            // held
    ];
    let on = run(&mut sink, &frames);
    let expect = [
        false, false, false, true, true, true, true, true, true, false, false, true, true,
    ];
    assert_eq!(on, expect);
    sink.close().unwrap();
    assert!(!sink.is_on());
    // Closing twice writes nothing more; neither does dropping a closed sink.
    sink.close().unwrap();
    drop(sink);
    pin.done();
}

#[test]
fn classification_counts_and_replay_is_deterministic() {
    let mut cfg = config();
    cfg.label = "cross".into();
    let classified = |frame_no: u64, ms: f64, label: &str, score: f32| {
        let mut f = frame(frame_no, ms, &[]);
        f.classification = Some(Classification {
            label: label.into(),
            class: 1,
            score,
        });
        f
    };
    let frames = [
        classified(0, 0.0, "circle", 0.9),
        classified(1, 33.3, "cross", 0.9),
        classified(2, 66.7, "circle", 0.9),
        classified(20, 666.7, "circle", 0.9),
    ];
    // The same sequence twice gives the same transitions, however fast it is fed.
    for _ in 0..2 {
        let mut pin = Mock::new(&[
            Transaction::set(State::Low),
            Transaction::set(State::High),
            Transaction::set(State::Low),
        ]);
        let mut sink = LabelIndicator::new(PinIndicator(pin.clone()), cfg.clone()).unwrap();
        assert_eq!(run(&mut sink, &frames), [false, true, true, false]);
        sink.close().unwrap();
        drop(sink);
        pin.done();
    }
}

#[test]
fn a_restarted_source_clock_holds_instead_of_sticking() {
    let mut pin = Mock::new(&[
        Transaction::set(State::Low),
        Transaction::set(State::High),
        Transaction::set(State::Low),
    ]);
    let mut sink = LabelIndicator::new(PinIndicator(pin.clone()), config()).unwrap();
    let frames = [
        frame(50, 5000.0, &[("person", 0.9)]),
        frame(0, 0.0, &[]),   // clock restarted: hold from here
        frame(4, 400.0, &[]), // held
        frame(5, 500.0, &[]), // off
    ];
    assert_eq!(run(&mut sink, &frames), [true, true, true, false]);
    sink.close().unwrap();
    drop(sink);
    pin.done();
}

#[test]
fn pin_errors_are_sink_errors_and_the_write_is_retried() {
    let mut pin = Mock::new(&[
        Transaction::set(State::Low),
        Transaction::set(State::High).with_error(MockError::Io(std::io::ErrorKind::Other)),
        Transaction::set(State::High),
        Transaction::set(State::Low).with_error(MockError::Io(std::io::ErrorKind::Other)),
    ]);
    let mut sink = LabelIndicator::new(PinIndicator(pin.clone()), config()).unwrap();
    let img = RgbImage::new(1, 1);
    let stats = StatsSnapshot::default();
    let seen = frame(0, 0.0, &[("person", 0.9)]);
    let err = sink.handle(&seen, &img, &stats).unwrap_err();
    assert!(
        matches!(&err, SinkError::Other { sink, reason } if sink == "gpio" && reason.contains("person") && reason.contains("on")),
        "{err}"
    );
    assert!(!sink.is_on());
    // The state is unknown after the failure, so the next frame writes again.
    sink.handle(&frame(1, 100.0, &[("person", 0.9)]), &img, &stats)
        .unwrap();
    assert!(sink.is_on());
    let err = sink.close().unwrap_err();
    assert!(err.to_string().starts_with("gpio: "), "{err}");
    // Dropping retries the off write after a failed close: expect it.
    pin.update_expectations(&[Transaction::set(State::Low)]);
    drop(sink);
    pin.done();
}

#[test]
fn construction_reports_a_failing_pin() {
    let mut pin = Mock::new(&[
        Transaction::set(State::Low).with_error(MockError::Io(std::io::ErrorKind::Other)),
        Transaction::set(State::Low),
    ]);
    let res = LabelIndicator::new(PinIndicator(pin.clone()), config());
    assert!(matches!(res, Err(SinkError::Other { .. })));
    pin.done();
}

#[cfg(target_os = "linux")]
#[test]
fn open_errors_name_the_chip_line_and_a_fix() {
    let fail = |chip: &str, line: u32| match open_cdev(Path::new(chip), line, "kestrel-test") {
        Ok(_) => panic!("{chip} opened as a GPIO chip"),
        Err(e) => e.to_string(),
    };
    let err = fail("/dev/gpiochip-kestrel-missing", 17);
    assert!(err.contains("/dev/gpiochip-kestrel-missing"), "{err}");
    assert!(err.contains("gpiodetect"), "{err}");
    // A file that is not a GPIO chip: the chip-info ioctl fails.
    let err = fail("/dev/null", 3);
    assert!(err.contains("/dev/null"), "{err}");
    assert!(err.contains("not a GPIO chip"), "{err}");
}
