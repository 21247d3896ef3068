//! `shoal pack-image`: a directory tree as a one-layer OCI image archive,
//! for `runtimeClassName: runc` pods, without Docker or a registry.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_runtime::oci::{pack_dir, ImageConfig};

#[derive(Args, Debug)]
pub struct PackArgs {
    /// The directory that becomes the image's root filesystem.
    rootfs: PathBuf,
    /// Where the archive (an OCI image layout in a tar) is written.
    #[arg(long, short)]
    output: PathBuf,
    /// The image's Entrypoint, one flag per word.
    #[arg(long = "entrypoint", value_name = "WORD", allow_hyphen_values = true)]
    entrypoint: Vec<String>,
    /// The image's Cmd, one flag per word.
    #[arg(long = "cmd", value_name = "WORD", allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// NAME=value environment entries.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The working directory (absolute).
    #[arg(long)]
    workdir: Option<String>,
    /// `uid[:gid]` or a name in the image's /etc/passwd.
    #[arg(long)]
    user: Option<String>,
}

pub fn run(a: PackArgs) -> anyhow::Result<()> {
    if !a.rootfs.is_dir() {
        anyhow::bail!("{} is not a directory", a.rootfs.display());
    }
    if let Some(bad) = a.env.iter().find(|e| !e.contains('=')) {
        anyhow::bail!("--env {bad:?}: expected NAME=VALUE");
    }
    if let Some(w) = a.workdir.as_deref().filter(|w| !w.starts_with('/')) {
        anyhow::bail!("--workdir {w:?}: must be an absolute path");
    }
    let config = ImageConfig {
        entrypoint: a.entrypoint,
        cmd: a.cmd,
        env: a.env,
        working_dir: a.workdir.unwrap_or_default(),
        user: a.user.unwrap_or_default(),
    };
    pack_dir(&a.rootfs, &config, &a.output)
        .with_context(|| format!("packing {} into {}", a.rootfs.display(), a.output.display()))?;
    println!("file://{}", std::path::absolute(&a.output)?.display());
    Ok(())
}
