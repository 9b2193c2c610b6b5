use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// A credential from config, env or a `*_file`. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(SecretString::from(s.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from. A file is re-read on each use by callers that rotate
/// (`read`), so a mounted Kubernetes secret can change under a running process.
#[derive(Clone, Debug)]
pub enum SecretSource {
    Value(Secret),
    File(std::path::PathBuf),
}

impl SecretSource {
    pub fn read(&self) -> std::io::Result<Secret> {
        match self {
            SecretSource::Value(s) => Ok(s.clone()),
            SecretSource::File(p) => {
                let text = std::fs::read_to_string(p)?;
                Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
            }
        }
    }
}

/// The secret a section gives as `key` or `key_file` (relative to `base`), read once; `None`
/// when neither is set. Both set, an unreadable file or an empty value is an error naming
/// the key.
pub fn from_key(
    key: &str,
    value: Option<String>,
    file: Option<std::path::PathBuf>,
    base: Option<&std::path::Path>,
) -> Result<Option<Secret>, super::Error> {
    let source = match (value.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => {
            return Err(super::Error::invalid(
                key,
                None,
                format!("set {key} or {key}_file, not both"),
            ));
        }
        (Some(v), None) => SecretSource::Value(Secret::new(v)),
        (None, Some(f)) => SecretSource::File(base.map_or(f.clone(), |b| b.join(&f))),
        (None, None) => return Ok(None),
    };
    let s = source.read().map_err(|e| {
        super::Error::invalid(format!("{key}_file"), None, format!("cannot be read: {e}"))
    })?;
    if s.expose().is_empty() {
        return Err(super::Error::invalid(key, None, "is empty"));
    }
    Ok(Some(s))
}
