use std::sync::Arc;

use super::{FamilyDef, FamilyId, family};

/// A series' label set, kept pre-rendered as `a="x",b="y"` (no braces) in the family's
/// declared label order, with values escaped once for both exposition formats.
///
/// Rendering a million series is then a copy, and the string doubles as the series key in
/// memory and in SQLite. Shared, not copied, by clones: the series of one entity in several
/// families (a user's commits, reviews and last event) hold one string ([`Interner`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<str>);

// Hash, Eq and Ord are the string's, so a set of labels can be searched by `&str`.
impl std::borrow::Borrow<str> for Labels {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Hands out one shared copy of equal label sets. Used where series arrive as text (loading
/// a store), so a label set repeated across a scope's families is held once.
#[derive(Default)]
pub struct Interner(std::collections::HashSet<Labels>);

impl Interner {
    /// The shared copy of `rendered` (a string [`Labels::new`] produced).
    pub fn rendered(&mut self, rendered: &str) -> Labels {
        if let Some(l) = self.0.get(rendered) {
            return l.clone();
        }
        let l = Labels::from_rendered(rendered);
        self.0.insert(l.clone());
        l
    }

    /// Forgets every label set, keeping the memory of the set itself.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

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
        Labels(Arc::from(""))
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
        Ok(Labels(Arc::from(out)))
    }

    /// Wraps a string read back from the store, which was produced by [`Labels::new`].
    pub fn from_rendered(s: &str) -> Self {
        Labels(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both hold the one shared string (not merely equal ones).
    pub fn shares(&self, other: &Labels) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
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
    fn the_interner_hands_out_one_copy_per_label_set() {
        let mut i = Interner::default();
        let a = i.rendered(r#"org="o",repo="r",user="u""#);
        let b = i.rendered(r#"org="o",repo="r",user="u""#);
        let c = i.rendered(r#"org="o",repo="r",user="v""#);
        assert!(a.shares(&b) && a == b);
        assert!(!a.shares(&c));
        assert!(
            !a.shares(&Labels::from_rendered(a.as_str())),
            "a copy is not shared"
        );
        i.clear();
        assert!(!a.shares(&i.rendered(a.as_str())));
    }

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
