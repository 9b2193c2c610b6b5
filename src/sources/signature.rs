//! HMAC-SHA256 webhook signatures, `sha256=<hex>`: GitHub's `X-Hub-Signature-256` and a Jira
//! admin webhook's `X-Hub-Signature`. Compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Secret;

pub type Key = Hmac<Sha256>;

/// The HMAC key of a webhook secret.
pub fn key(secret: &Secret) -> Key {
    Key::new_from_slice(secret.expose().as_bytes()).expect("HMAC accepts keys of any length")
}

/// The 32-byte tag a `sha256=<hex>` header carries; `None` for anything else.
pub fn parse(header: &[u8]) -> Option<[u8; 32]> {
    let hex = header.strip_prefix(b"sha256=")?;
    let mut tag = [0u8; 32];
    hex::decode_to_slice(hex, &mut tag).ok()?;
    Some(tag)
}

/// Whether `tag` is `body`'s HMAC under `key`, in constant time.
pub fn matches(key: &Key, body: &[u8], tag: &[u8; 32]) -> subtle::Choice {
    let mut m = key.clone();
    m.update(body);
    subtle::ConstantTimeEq::ct_eq(m.finalize().into_bytes().as_slice(), tag.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_github_signatures_and_nothing_else() {
        let key = key(&Secret::new("It's a Secret to Everybody"));
        let tag = parse(b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
            .unwrap();
        assert!(bool::from(matches(&key, b"Hello, World!", &tag)));
        assert!(!bool::from(matches(&key, b"Hello, World?", &tag)));
        for bad in [
            &b"sha256=zz"[..],
            b"sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e",
            b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1700",
            b"",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
