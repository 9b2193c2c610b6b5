//! Gzip-compressed `/metrics` from per-scope parts compressed once and kept until the scope
//! changes, so a scrape of unchanged data only concatenates bytes.
//!
//! The parts are raw deflate, each from a fresh compressor ended with a sync flush (byte
//! aligned, not final), so they concatenate into one valid deflate stream; the scrape wraps
//! them in a single gzip member whose CRC is combined from the parts' CRCs. One member rather
//! than one member per part because browsers (Chromium's gzip filter) ignore everything after
//! the first member, while Prometheus would read both. Written by hand because no crate
//! assembles a deflate stream from independently compressed pieces; flate2 does the
//! compression and crc32fast the CRC arithmetic.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use flate2::{Compress, Compression, FlushCompress};

use super::{Format, write_header, write_series};
use crate::metrics::{FAMILIES, FamilyId, ScopeData};

/// One family of one scope (or a family's header), compressed.
struct Part {
    family: FamilyId,
    deflate: Box<[u8]>,
    crc: u32,
    len: u64,
}

/// A scope's compressed parts, filled by its first gzip scrape. Series lines are the same in
/// both formats (only family headers differ), so one set serves both. Only compressed parts
/// are kept: a plain render is already a sequence of copies from the
/// pre-escaped labels, and holding the plain text too would double the memory of large
/// scopes for no gain.
#[derive(Default)]
pub struct Encoded(OnceLock<Arc<[Part]>>);

impl Clone for Encoded {
    /// A copy is made only to be changed, so it starts empty.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoded")
    }
}

fn slot(format: Format) -> usize {
    match format {
        Format::Text => 0,
        Format::OpenMetrics => 1,
    }
}

/// How a gzip render went: scopes whose parts were reused and scopes compressed for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUse {
    pub reused: u64,
    pub encoded: u64,
}

/// Lifetime totals per format, for the exporter's own counters.
#[derive(Default)]
pub struct CacheTotals {
    reused: [AtomicU64; 2],
    encoded: [AtomicU64; 2],
}

impl CacheTotals {
    pub fn add(&self, format: Format, used: CacheUse) {
        self.reused[slot(format)].fetch_add(used.reused, Ordering::Relaxed);
        self.encoded[slot(format)].fetch_add(used.encoded, Ordering::Relaxed);
    }

    /// (format, reused, encoded) per format.
    pub fn read(&self) -> [(&'static str, u64, u64); 2] {
        [Format::Text, Format::OpenMetrics].map(|f| {
            (
                f.as_str(),
                self.reused[slot(f)].load(Ordering::Relaxed),
                self.encoded[slot(f)].load(Ordering::Relaxed),
            )
        })
    }
}

/// Compresses `plain` as a raw deflate piece that later pieces may follow.
fn deflate_piece(c: &mut Compress, plain: &[u8]) -> Box<[u8]> {
    c.reset();
    let mut out = Vec::with_capacity(plain.len() / 6 + 64);
    loop {
        let done = c.total_in() as usize;
        c.compress_vec(&plain[done..], &mut out, FlushCompress::Sync)
            .expect("deflate of an in-memory buffer cannot fail");
        // The flush is complete once all input is taken and output room was left over.
        if c.total_in() as usize == plain.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(4096));
    }
    out.into_boxed_slice()
}

fn part(c: &mut Compress, family: FamilyId, plain: &[u8]) -> Part {
    let mut crc = crc32fast::Hasher::new();
    crc.update(plain);
    Part {
        family,
        deflate: deflate_piece(c, plain),
        crc: crc.finalize(),
        len: plain.len() as u64,
    }
}

fn compressor() -> Compress {
    Compress::new(Compression::fast(), false)
}

fn encode_scope(scope: &ScopeData) -> Arc<[Part]> {
    let mut c = compressor();
    let mut plain = Vec::new();
    scope
        .families
        .iter()
        .filter(|(_, series)| !series.is_empty())
        .map(|(fid, series)| {
            let def = crate::metrics::family(*fid);
            plain.clear();
            for (labels, value) in series {
                write_series(def, labels.as_str(), value, &mut plain);
            }
            part(&mut c, *fid, &plain)
        })
        .collect()
}

/// Every family's `# HELP`/`# TYPE` lines per format, compressed once per process.
fn headers(format: Format) -> &'static [Part] {
    static HEADERS: [OnceLock<Vec<Part>>; 2] = [OnceLock::new(), OnceLock::new()];
    HEADERS[slot(format)].get_or_init(|| {
        let mut c = compressor();
        let mut plain = Vec::new();
        FAMILIES
            .iter()
            .enumerate()
            .map(|(i, def)| {
                plain.clear();
                write_header(def, format, &mut plain).expect("writing to a Vec");
                part(&mut c, FamilyId(i as u16), &plain)
            })
            .collect()
    })
}

fn eof() -> &'static Part {
    static EOF: OnceLock<Part> = OnceLock::new();
    EOF.get_or_init(|| part(&mut compressor(), FamilyId(0), b"# EOF\n"))
}

/// Writes the same exposition as `render(scopes, format)`, gzip-compressed, from each
/// scope's cached parts (compressing those that have none yet).
pub fn render_gzip<W: Write>(
    scopes: &[Arc<ScopeData>],
    format: Format,
    out: &mut W,
) -> io::Result<CacheUse> {
    let mut used = CacheUse::default();
    let parts: Vec<Arc<[Part]>> = scopes
        .iter()
        .map(|s| {
            let mut fresh = false;
            let p = s
                .encoded
                .0
                .get_or_init(|| {
                    fresh = true;
                    encode_scope(s)
                })
                .clone();
            if fresh {
                used.encoded += 1;
            } else {
                used.reused += 1;
            }
            p
        })
        .collect();

    // A gzip member header: no name, no mtime, unknown OS (RFC 1952).
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0u64;
    let mut emit = |p: &Part, out: &mut W| -> io::Result<()> {
        out.write_all(&p.deflate)?;
        crc.combine(&crc32fast::Hasher::new_with_initial_len(p.crc, p.len));
        len += p.len;
        Ok(())
    };
    // Each scope's parts are in family order, so one cursor per scope walks them all once.
    let mut cursors = vec![0usize; parts.len()];
    let headers = headers(format);
    for (i, header) in headers.iter().enumerate() {
        let fid = FamilyId(i as u16);
        let mut wrote_header = false;
        for (scope, cursor) in parts.iter().zip(cursors.iter_mut()) {
            if let Some(p) = scope.get(*cursor).filter(|p| p.family == fid) {
                if !wrote_header {
                    emit(header, out)?;
                    wrote_header = true;
                }
                emit(p, out)?;
                *cursor += 1;
            }
        }
    }
    if format == Format::OpenMetrics {
        emit(eof(), out)?;
    }
    // The final block: empty, fixed Huffman, BFINAL set.
    out.write_all(&[0x03, 0x00])?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    out.write_all(&(len as u32).to_le_bytes())?;
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{self, HistogramValue, Labels, Value};
    use std::collections::BTreeMap;
    use std::io::Read;

    fn scope(name: &str, n: usize) -> Arc<ScopeData> {
        let mut families = BTreeMap::new();
        let fid = metrics::GH_ACTIVITY_COMMITS_24H;
        let m = (0..n)
            .map(|u| {
                (
                    Labels::new(fid, &["o", name, &format!("user-{u}")]).unwrap(),
                    Value::Number(u as f64),
                )
            })
            .collect();
        families.insert(fid, m);
        let h = metrics::DEVMETRICS_HTTP_REQUEST_DURATION_SECONDS;
        let mut hv = HistogramValue::new(metrics::family(h).buckets);
        hv.observe(metrics::family(h).buckets, 0.2);
        families.insert(
            h,
            [(
                Labels::new(h, &[name]).unwrap(),
                Value::Histogram(Box::new(hv)),
            )]
            .into(),
        );
        families.insert(metrics::DEVMETRICS_BUILD_INFO, BTreeMap::new());
        Arc::new(ScopeData {
            name: Arc::from(name),
            families,
            ..Default::default()
        })
    }

    fn gunzip_single_member(bytes: &[u8]) -> String {
        // GzDecoder reads one member only, as browsers do: the body must be one member.
        let mut s = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[test]
    fn equals_the_plain_render_in_both_formats_cold_and_cached() {
        let scopes = vec![scope("a", 3), scope("b", 0), scope("c", 2000)];
        for format in [Format::Text, Format::OpenMetrics] {
            let mut plain = Vec::new();
            super::super::render(&scopes, format, &mut plain).unwrap();
            let mut cold = Vec::new();
            let used = render_gzip(&scopes, format, &mut cold).unwrap();
            // Series parts serve both formats: only the first render compresses them.
            let expect = if format == Format::Text {
                (0, 3)
            } else {
                (3, 0)
            };
            assert_eq!((used.reused, used.encoded), expect);
            let mut cached = Vec::new();
            let used = render_gzip(&scopes, format, &mut cached).unwrap();
            assert_eq!(
                used,
                CacheUse {
                    reused: 3,
                    encoded: 0
                }
            );
            assert_eq!(cold, cached);
            assert_eq!(
                gunzip_single_member(&cold),
                String::from_utf8(plain).unwrap()
            );
        }
    }

    #[test]
    fn a_changed_copy_is_encoded_again_and_others_are_reused() {
        let a = scope("a", 5);
        let b = scope("b", 5);
        let mut out = Vec::new();
        render_gzip(&[a.clone(), b.clone()], Format::Text, &mut out).unwrap();
        let mut changed = a.clone();
        Arc::make_mut(&mut changed)
            .families
            .get_mut(&metrics::GH_ACTIVITY_COMMITS_24H)
            .unwrap()
            .insert(
                Labels::new(metrics::GH_ACTIVITY_COMMITS_24H, &["o", "a", "new"]).unwrap(),
                Value::Number(42.0),
            );
        let mut out = Vec::new();
        let used = render_gzip(&[changed.clone(), b], Format::Text, &mut out).unwrap();
        assert_eq!(
            used,
            CacheUse {
                reused: 1,
                encoded: 1
            }
        );
        assert!(gunzip_single_member(&out).contains("user=\"new\"} 42\n"));
    }

    #[test]
    fn empty_exposition_is_a_valid_stream() {
        for format in [Format::Text, Format::OpenMetrics] {
            let mut out = Vec::new();
            render_gzip(&[], format, &mut out).unwrap();
            let text = gunzip_single_member(&out);
            assert_eq!(
                text,
                if format == Format::Text {
                    ""
                } else {
                    "# EOF\n"
                }
            );
        }
    }
}
