//! `kestrel demo`: the main job, end to end on this machine.

use std::path::PathBuf;

use anyhow::bail;
use kestrel_shared::CutPoint;

use super::Context;

/// Arguments of `kestrel demo`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel demo                               # the whole path on synthetic data, into ./demo\n  kestrel demo --out /tmp/demo --weights mobilenet_v2-b0353104.pth"
)]
pub struct DemoArgs {
    /// Output directory.
    #[arg(long, default_value = "kestrel-demo")]
    pub out: PathBuf,
    /// Cut point of the exported trunk.
    #[arg(long, default_value = "pooled")]
    pub cut: CutPoint,
}

/// Run the demo; fails when its results are off.
pub fn run(a: &DemoArgs, ctx: &Context) -> anyhow::Result<()> {
    let p = ctx.pretrained()?;
    let report = crate::demo::run(&p, a.cut, &a.out)?;
    if report.top1_correct != report.photos
        || report.max_abs_diff_burn_vs_tract > crate::demo::MAX_ABS_DIFF
    {
        bail!("demo results are off: {report:?}");
    }
    Ok(())
}
