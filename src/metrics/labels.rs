use super::{FamilyDef, FamilyId, family};

/// A series' label set, kept pre-rendered as `a="x",b="y"` (no braces) in the family's
/// declared label order, with values escaped once for both exposition formats.
///
/// Rendering a million series is then a copy, and the string doubles as the series key in
/// memory and in SQLite.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Box<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("family {family} takes {expected} label values, got {got}")]
    Arity {
        family: &'static str,
        expected: usize,
        got: usize,
    },
}

impl Labels {
    pub fn empty() -> Self {
        Labels(Box::from(""))
    }

    pub fn new<S: AsRef<str>>(id: FamilyId, values: &[S]) -> Result<Self, LabelError> {
        Self::for_def(family(id), values)
    }

    pub fn for_def<S: AsRef<str>>(def: &FamilyDef, values: &[S]) -> Result<Self, LabelError> {
        if values.len() != def.labels.len() {
            return Err(LabelError::Arity {
                family: def.name,
                expected: def.labels.len(),
                got: values.len(),
            });
        }
        let mut out = String::with_capacity(values.iter().map(|v| v.as_ref().len() + 12).sum());
        for (i, (name, value)) in def.labels.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(name);
            out.push_str("=\"");
            escape_label_value(value.as_ref(), &mut out);
            out.push('"');
        }
        Ok(Labels(out.into_boxed_str()))
    }

    /// Wraps a string read back from the store, which was produced by [`Labels::new`].
    pub fn from_rendered(s: &str) -> Self {
        Labels(Box::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The unescaped value of label `name`, for tests, the status page and sinks.
    pub fn get(&self, name: &str) -> Option<String> {
        self.pairs().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        let mut rest = self.as_str();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let eq = rest.find("=\"")?;
            let name = rest[..eq].to_string();
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => break,
                    },
                    '"' => {
                        end = Some(eq + 2 + i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end?;
            rest = rest[end..].strip_prefix(',').unwrap_or(&rest[end..]);
            Some((name, value))
        })
    }
}

/// A user's label when logins must not show: the first 8 bytes of HMAC-SHA256 of `name`
/// under `key`, in hex. Stable for a key, and not reversible by hashing a member list.
pub fn hashed_label(key: &[u8], name: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(name.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..8])
}

/// Label-value escaping is identical in Prometheus text 0.0.4 and OpenMetrics 1.0:
/// backslash, double quote and line feed.
pub fn escape_label_value(value: &str, out: &mut String) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;

    #[test]
    fn renders_and_parses_back_escaped_values() {
        let l = Labels::new(
            metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL,
            &["a\"b\\c\nd", "200"],
        )
        .unwrap();
        assert_eq!(l.as_str(), r#"route="a\"b\\c\nd",code="200""#);
        let pairs: Vec<_> = l.pairs().collect();
        assert_eq!(
            pairs,
            vec![
                ("route".to_string(), "a\"b\\c\nd".to_string()),
                ("code".to_string(), "200".to_string())
            ]
        );
        assert_eq!(l.get("code").as_deref(), Some("200"));
    }

    #[test]
    fn arity_is_checked() {
        let err = Labels::new(metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, &["x"]).unwrap_err();
        assert!(matches!(
            err,
            LabelError::Arity {
                expected: 2,
                got: 1,
                ..
            }
        ));
    }
}
