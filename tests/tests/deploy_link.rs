//! The deploy routine ([`kestrel_trainer::deploy::link::deploy`]) against the in-memory board:
//! what travels, in which order, how a cut upload resumes, and that a refused or damaged bundle
//! leaves the board where it was. The serial and SSH links are tested for their own parts in
//! deploy_serial.rs and deploy_ssh.rs.

use kestrel_e2e::tiny_bundle;
use kestrel_trainer::deploy::fake::FakeBoard;
use kestrel_trainer::deploy::link::{BoardLink, deploy};
use kestrel_trainer::deploy::{DeployError, LocalBundle};
use kestrel_trainer::progress::Silent;

fn bundle(dir: &std::path::Path, trunk: u64, head: u64) -> LocalBundle {
    tiny_bundle(dir, trunk, head);
    LocalBundle::open(dir, true).unwrap()
}

#[test]
fn only_missing_blobs_travel_models_before_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let a = bundle(&tmp.path().join("a"), 1, 1);
    let b = bundle(&tmp.path().join("b"), 1, 2);
    let mut board = FakeBoard::new();

    let first = deploy(&mut board, &a, false, &Silent).unwrap();
    let names: Vec<&str> = a.files().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(first.sent(), names, "everything travels to an empty board");
    assert_eq!(names.last(), Some(&"manifest.json"), "the manifest last");
    assert_eq!(
        board.calls.last().map(String::as_str),
        Some(format!("install {}", a.id).as_str())
    );
    let total: u64 = a.files().iter().map(|f| f.size).sum();
    assert_eq!(first.payload_bytes, total);
    assert_eq!(first.line_bytes_out, total);
    assert_eq!(board.current.as_deref(), Some(a.id.as_str()));

    // The same bundle again: nothing travels, the install is repeated (harmless).
    let again = deploy(&mut board, &a, false, &Silent).unwrap();
    assert!(again.sent().is_empty(), "{:?}", again.sent());
    assert_eq!(again.payload_bytes, 0);

    // A retrained head: the trunk stays on the board.
    let head_only = deploy(&mut board, &b, false, &Silent).unwrap();
    let trunk: Vec<&str> = b
        .files()
        .iter()
        .filter(|f| f.name.starts_with("trunk"))
        .map(|f| f.name.as_str())
        .collect();
    assert!(!trunk.is_empty());
    for t in &trunk {
        assert!(!head_only.sent().contains(t), "{t} travelled again");
    }
    assert!(head_only.sent().contains(&"manifest.json"));
    assert_eq!(board.current.as_deref(), Some(b.id.as_str()));

    // Rollback goes back one bundle, and refuses past the first.
    assert!(board.rollback().unwrap().contains(&a.id));
    assert_eq!(board.current.as_deref(), Some(a.id.as_str()));
    assert!(matches!(board.rollback(), Err(DeployError::Refused(_))));
}

#[test]
fn a_cut_upload_resumes_where_the_board_stands() {
    let tmp = tempfile::tempdir().unwrap();
    let a = bundle(&tmp.path().join("a"), 3, 3);
    let mut board = FakeBoard::new();
    let first_file = &a.files()[0];
    let cut_at = first_file.size / 3;
    board.cut_after = Some(cut_at);

    let err = deploy(&mut board, &a, false, &Silent).unwrap_err();
    assert!(matches!(err, DeployError::Link { .. }), "{err}");
    assert_eq!(board.current, None, "nothing installed after a cut");
    assert_eq!(board.partial[&first_file.sha256].len() as u64, cut_at);
    assert!(board.blobs.is_empty());

    board.cut_after = None;
    let second = deploy(&mut board, &a, false, &Silent).unwrap();
    let resumed = &second.blobs[0];
    assert_eq!(resumed.name, first_file.name);
    assert_eq!(resumed.start_offset, cut_at, "resumes, not from 0");
    assert_eq!(resumed.bytes_sent, first_file.size - cut_at);
    let total: u64 = a.files().iter().map(|f| f.size).sum();
    assert_eq!(second.payload_bytes, total - cut_at);
    assert!(board.partial.is_empty());
    assert_eq!(board.current.as_deref(), Some(a.id.as_str()));
    assert!(
        board
            .calls
            .contains(&format!("put {}@{cut_at}", first_file.name)),
        "{:?}",
        board.calls
    );
}

#[test]
fn refused_or_damaged_bundles_leave_the_board_on_its_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let a = bundle(&tmp.path().join("a"), 5, 5);
    let b = bundle(&tmp.path().join("b"), 5, 6);
    let mut board = FakeBoard::new();
    deploy(&mut board, &a, false, &Silent).unwrap();

    board.refuse = Some("bundle is unsigned".into());
    let err = deploy(&mut board, &b, false, &Silent).unwrap_err();
    assert!(
        matches!(&err, DeployError::Refused(m) if m.contains("unsigned")),
        "{err}"
    );
    assert_eq!(board.current.as_deref(), Some(a.id.as_str()));

    // A byte damaged in flight: the blob is refused by its hash and not kept.
    board.refuse = None;
    let c = bundle(&tmp.path().join("c"), 7, 7);
    board.damage_at = Some(10);
    let err = deploy(&mut board, &c, false, &Silent).unwrap_err();
    assert!(
        matches!(&err, DeployError::Refused(m) if m.contains("does not match")),
        "{err}"
    );
    assert!(!board.blobs.contains_key(&c.files()[0].sha256));
    assert!(board.partial.is_empty(), "a damaged upload is dropped");
    assert_eq!(board.current.as_deref(), Some(a.id.as_str()));

    board.damage_at = None;
    deploy(&mut board, &c, false, &Silent).unwrap();
    assert_eq!(board.current.as_deref(), Some(c.id.as_str()));
}
