//! `kestrel-edge cameras`: the cameras this board can open, as a table or JSON.

use std::path::Path;

pub use crate::cameras::CamerasArgs;
use crate::cameras::{list, render};

/// `kestrel-edge cameras`: print the list (text or JSON).
pub fn run(args: &CamerasArgs) -> anyhow::Result<()> {
    let list = list(Path::new("/dev"));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render(&list));
    }
    Ok(())
}
