//! `kestrel boards`: the boards Kestrel knows (built in, from `boards/`) or those of a directory
//! or file, as a table or JSON; a malformed board file is an error naming the file and field.

use std::path::PathBuf;

use kestrel_shared::Board;
use kestrel_shared::board::{boards_in, boards_table, load_builtin_boards};

/// `kestrel boards` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel boards\n  kestrel boards boards/my-board.toml --json     # check a board file of your own"
)]
pub struct BoardsArgs {
    /// Board files or directories of board files to read instead of the built-in ones (each file
    /// is validated; the first bad one is reported with its field).
    pub paths: Vec<PathBuf>,
    /// Print the boards as a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// The boards `args` name (the built-in ones when none).
pub fn boards(args: &BoardsArgs) -> anyhow::Result<Vec<Board>> {
    if args.paths.is_empty() {
        return Ok(load_builtin_boards()?);
    }
    let mut out = Vec::new();
    for p in &args.paths {
        if p.is_dir() {
            out.extend(boards_in(p)?);
        } else {
            out.push(Board::load(p)?);
        }
    }
    Ok(out)
}

/// `kestrel boards`: print them.
pub fn run(args: &BoardsArgs) -> anyhow::Result<()> {
    let list = boards(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", boards_table(&list));
    }
    Ok(())
}
