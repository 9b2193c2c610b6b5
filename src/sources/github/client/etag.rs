//! Conditional GETs: a page's ETag, `next` link and body, kept in the store's kv so a 304
//! (which spends no primary rate limit) survives restarts. GitHub ties an ETag to the token
//! that got it, which is why installation tokens are kept in the kv too.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use std::time::Duration;

use super::{Error, Page, next_link};
use crate::store::SharedStore;

const ETAG_NS: &str = "github.etag";
/// How long an unused page is kept.
const TTL: Duration = Duration::from_secs(30 * 86_400);

/// One cached page of `org` at `url`.
pub(super) struct EtagCache<'a> {
    store: &'a SharedStore,
    key: String,
}

/// A page as cached: its ETag, to send as `if-none-match`, and what a 304 stands for.
pub(super) struct Cached {
    pub etag: String,
    /// The page's own `next` link, a newline, then its body.
    page: Bytes,
}

impl<'a> EtagCache<'a> {
    pub fn new(store: &'a SharedStore, org: &str, url: &str) -> EtagCache<'a> {
        EtagCache {
            store,
            key: format!("{org}|{url}"),
        }
    }

    pub async fn load(&self) -> Result<Option<Cached>, Error> {
        Ok(self
            .store
            .kv_get(ETAG_NS, &self.key)
            .await
            .map_err(|e| Error::Store(e.to_string()))?
            .and_then(|v| split_cached(&v)))
    }

    pub async fn forget(&self) -> Result<(), Error> {
        self.store
            .kv_delete(ETAG_NS, &self.key)
            .await
            .map_err(|e| Error::Store(e.to_string()))
    }

    pub async fn save(&self, etag: &str, next: Option<&str>, body: &[u8]) -> Result<(), Error> {
        self.store
            .kv_put(ETAG_NS, &self.key, encode(etag, next, body), Some(TTL))
            .await
            .map_err(|e| Error::Store(e.to_string()))
    }
}

impl Cached {
    /// The cached page a 304 with `headers` confirms, as a 200.
    pub fn replay(self, headers: &HeaderMap) -> Page {
        // The cached page's own next link was stored with it.
        let (next, body) = split_next(&self.page);
        Page {
            status: 200,
            body,
            next: next.or(next_link(headers)),
            not_modified: true,
        }
    }
}

fn encode(etag: &str, next: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 64);
    v.extend_from_slice(etag.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(next.unwrap_or("").as_bytes());
    v.push(b'\n');
    v.extend_from_slice(body);
    v
}

fn split_cached(v: &[u8]) -> Option<Cached> {
    let i = v.iter().position(|b| *b == b'\n')?;
    Some(Cached {
        etag: String::from_utf8(v[..i].to_vec()).ok()?,
        page: Bytes::copy_from_slice(&v[i + 1..]),
    })
}

fn split_next(v: &Bytes) -> (Option<String>, Bytes) {
    match v.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let next = String::from_utf8_lossy(&v[..i]).into_owned();
            ((!next.is_empty()).then_some(next), v.slice(i + 1..))
        }
        None => (None, v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_304_replays_the_cached_page_with_its_own_next_link() {
        let body = b"[{\"id\": 1}]\n";
        let c = split_cached(&encode("\"abc\"", Some("https://a/x?page=2"), body)).unwrap();
        assert_eq!(c.etag, "\"abc\"");
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            "<https://a/x?page=9>; rel=\"next\"".parse().unwrap(),
        );
        let p = c.replay(&h);
        assert_eq!((p.status, p.not_modified), (200, true));
        assert_eq!(p.next.as_deref(), Some("https://a/x?page=2"));
        assert_eq!(&p.body[..], body);
        // A last page stored without a next link takes the 304's, if any.
        let c = split_cached(&encode("e", None, body)).unwrap();
        assert_eq!(c.replay(&h).next.as_deref(), Some("https://a/x?page=9"));
        assert_eq!(
            split_cached(&encode("e", None, body))
                .unwrap()
                .replay(&HeaderMap::new())
                .next,
            None
        );
    }
}
