//! The exporter-toolkit web configuration file (`--web.config.file`): TLS and basic auth in
//! the format node_exporter and every official exporter read, so one file serves them all.

use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading web config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("web config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    // Accepted for compatibility with files written for Go exporters; rustls chooses
    // among its own safe suites and curves, so these are reported and ignored.
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Basic-auth users with bcrypt hashes. bcrypt is slow on purpose, so (as exporter-toolkit
/// does) a successful check is cached by a SHA-256 of user and password.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl BasicAuth {
    pub fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            // Spend the same time as for a real user, so timing does not reveal user names.
            let _ = bcrypt::verify(
                password,
                "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi",
            );
            return false;
        };
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.update([0]);
        h.update(hash.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        if self.verified.lock().contains(&digest) {
            return true;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            self.verified.lock().insert(digest);
        }
        ok
    }
}

pub struct WebSettings {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub basic_auth: Option<Arc<BasicAuth>>,
    pub http2: bool,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl WebSettings {
    pub fn none() -> Self {
        WebSettings {
            tls: None,
            basic_auth: None,
            http2: true,
            headers: Vec::new(),
        }
    }
}

pub fn load(path: &Path) -> Result<WebSettings, Error> {
    let invalid = |message: String| Error::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &PathBuf| {
        if p.is_relative() {
            base.join(p)
        } else {
            p.clone()
        }
    };

    let http = file.http_server_config.unwrap_or_default();
    let http2 = http.http2.unwrap_or(true);
    let tls = match file.tls_server_config {
        None => None,
        Some(t) => Some(Arc::new(tls_config(t, &rel, http2).map_err(invalid)?)),
    };
    let basic_auth = match file.basic_auth_users {
        Some(users) if !users.is_empty() => {
            for (user, hash) in &users {
                if !(hash.starts_with("$2a$")
                    || hash.starts_with("$2b$")
                    || hash.starts_with("$2y$"))
                {
                    return Err(invalid(format!(
                        "basic_auth_users.{user}: expected a bcrypt hash ($2y$...), not a clear-text password"
                    )));
                }
            }
            Some(Arc::new(BasicAuth {
                users,
                verified: Mutex::new(HashSet::new()),
            }))
        }
        _ => None,
    };
    let mut headers = Vec::new();
    for (k, v) in http.headers.unwrap_or_default() {
        let name = http::HeaderName::try_from(k.as_str())
            .map_err(|_| invalid(format!("http_server_config.headers: bad header name {k:?}")))?;
        let value = http::HeaderValue::try_from(v.as_str())
            .map_err(|_| invalid(format!("http_server_config.headers.{k}: bad header value")))?;
        headers.push((name, value));
    }
    Ok(WebSettings {
        tls,
        basic_auth,
        http2,
        headers,
    })
}

fn tls_config(
    t: TlsFile,
    rel: &dyn Fn(&PathBuf) -> PathBuf,
    http2: bool,
) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read =
        |inline: Option<String>, file: Option<PathBuf>, what: &str| -> Result<Vec<u8>, String> {
            match (inline, file) {
                (Some(s), _) => Ok(s.into_bytes()),
                (None, Some(p)) => {
                    let p = rel(&p);
                    std::fs::read(&p)
                        .map_err(|e| format!("tls_server_config.{what}_file {}: {e}", p.display()))
                }
                (None, None) => Err(format!("tls_server_config needs {what}_file (or {what})")),
            }
        };
    let cert_pem = read(t.cert, t.cert_file, "cert")?;
    let key_pem = read(t.key, t.key_file, "key")?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_server_config.cert_file: {e}"))?;
    if certs.is_empty() {
        return Err("tls_server_config.cert_file: no certificate found".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("tls_server_config.key_file: {e}"))?
        .ok_or("tls_server_config.key_file: no private key found")?;

    let version = |v: &str, key: &str| match v {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(format!(
            "tls_server_config.{key}: {v} is not supported (TLS12 or TLS13)"
        )),
        _ => Err(format!(
            "tls_server_config.{key}: unknown version {v:?} (TLS12 or TLS13)"
        )),
    };
    let min = version(t.min_version.as_deref().unwrap_or("TLS12"), "min_version")?;
    let max = version(t.max_version.as_deref().unwrap_or("TLS13"), "max_version")?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| {
                let rank = |x: &rustls::SupportedProtocolVersion| {
                    if x.version == rustls::ProtocolVersion::TLSv1_2 {
                        0
                    } else {
                        1
                    }
                };
                rank(v) >= rank(min) && rank(v) <= rank(max)
            })
            .collect();
    if versions.is_empty() {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    if t.cipher_suites.is_some()
        || t.curve_preferences.is_some()
        || t.prefer_server_cipher_suites.is_some()
    {
        tracing::warn!(
            "web config: cipher_suites, curve_preferences and prefer_server_cipher_suites are ignored; rustls uses its own safe defaults"
        );
    }
    if t.client_allowed_sans.is_some() {
        return Err("tls_server_config.client_allowed_sans is not supported yet".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let ca_pem = read(t.client_ca, t.client_ca_file, "client_ca")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
                roots
                    .add(c.map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?)
                    .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if auth == "VerifyClientCertIfGiven" {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?,
            )
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(format!(
                "tls_server_config.client_auth_type: {auth} accepts unverified certificates and is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            ));
        }
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type: unknown value {other:?}"
            ));
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: certificate and key do not match: {e}"))?;
    // Offer h2 only when the server will speak it, or clients negotiate h2 and are dropped.
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(cfg)
}
