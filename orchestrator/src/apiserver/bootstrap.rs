//! First-start material in the data directory: a CA and serving
//! certificate, the admin and node bearer tokens, and the admin kubeconfig.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::Rng;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Cert(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), BootstrapError> {
    fs::write(path, data).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

pub struct ServerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Loads the CA (creating it on first start) and issues a fresh serving
/// certificate for the addresses the server answers on.
pub fn tls(dir: &Path, ips: &[IpAddr]) -> Result<ServerTls, BootstrapError> {
    let tls_dir = dir.join("tls");
    fs::create_dir_all(&tls_dir).map_err(io(&tls_dir))?;
    let ca_cert_path = tls_dir.join("ca.crt");
    let ca_key_path = tls_dir.join("ca.key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "shoal-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let (ca_key, ca_pem) = if ca_cert_path.exists() && ca_key_path.exists() {
        let key_pem = fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
        let cert_pem = fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
        (KeyPair::from_pem(&key_pem)?, cert_pem)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params.self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        fs::write(&ca_cert_path, cert.pem()).map_err(io(&ca_cert_path))?;
        (key, cert.pem())
    };
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let mut names = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
    ];
    if let Ok(h) = fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "shoal-apiserver");
    let mut all_ips: Vec<IpAddr> =
        vec!["127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))];
    all_ips.extend(ips.iter().copied().filter(|ip| !ip.is_unspecified()));
    for ip in all_ips {
        params.subject_alt_names.push(SanType::IpAddress(ip));
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let cert_path = tls_dir.join("server.crt");
    let key_path = tls_dir.join("server.key");
    fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    Ok(ServerTls {
        ca_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads the token at `path`, creating a random one on first start.
pub fn token(path: &Path) -> Result<String, BootstrapError> {
    if let Ok(t) = fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut bytes = [0u8; 24];
    rand::rng().fill(&mut bytes);
    let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, t.as_bytes())?;
    Ok(t)
}

/// Writes `kubeconfig.yaml` for the admin and returns its path.
pub fn kubeconfig(
    dir: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
) -> Result<PathBuf, BootstrapError> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: admin\n    namespace: default\ncurrent-context: shoal\n"
    );
    let path = dir.join("kubeconfig.yaml");
    write_private(&path, text.as_bytes())?;
    Ok(path)
}
