//! `npd-ext prepare-dir DIR --owner UID:GID --mode 0750`: a directory made
//! ready for a non-root writer (the image has no shell for `mkdir`/`chown`).

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, bail};

use crate::cli::PrepareDirArgs;

pub fn run(args: &PrepareDirArgs) -> anyhow::Result<()> {
    let Some((uid, gid)) = args
        .owner
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
    else {
        bail!("--owner {:?}: expected UID:GID, e.g. 1000:1000", args.owner);
    };
    let mode = u32::from_str_radix(args.mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .with_context(|| {
            format!(
                "--mode {:?}: expected octal permission bits, e.g. 0750",
                args.mode
            )
        })?;
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("cannot give {} to {uid}:{gid}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", dir.display()))?;
    Ok(())
}
