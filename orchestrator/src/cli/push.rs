//! `shoal push`: a Wasm module or component, or an image archive, into an
//! OCI registry, so pods can name it by reference (as `spin registry push`
//! and `docker push` do).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_runtime::Credentials;

#[derive(Args, Debug)]
pub struct PushArgs {
    /// A `.wasm` file (pushed as a Wasm OCI artifact) or an image archive
    /// from `shoal pack-image` or `docker save` (pushed as a container
    /// image).
    file: PathBuf,
    /// Where to: `registry[:port]/repository:tag`.
    reference: String,
    /// A user name for the registry; the password is read from
    /// `SHOAL_REGISTRY_PASSWORD`.
    #[arg(long)]
    username: Option<String>,
}

pub async fn run(a: PushArgs) -> anyhow::Result<()> {
    let credentials = match &a.username {
        Some(user) => {
            let password = std::env::var("SHOAL_REGISTRY_PASSWORD")
                .context("--username needs the password in SHOAL_REGISTRY_PASSWORD")?;
            let server = a
                .reference
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            vec![Credentials {
                server,
                username: user.clone(),
                password,
            }]
        }
        None => Vec::new(),
    };
    let digest = shoal_runtime::image::push(&a.file, &a.reference, &credentials)
        .await
        .with_context(|| format!("pushing {} to {}", a.file.display(), a.reference))?;
    let name = a
        .reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or(a.reference.as_str(), |(n, _)| n);
    println!("{name}@{digest}");
    Ok(())
}
