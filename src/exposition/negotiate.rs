#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::OpenMetrics => "openmetrics",
        }
    }
}

/// Picks the format from `Accept` and whether to gzip from `Accept-Encoding`.
///
/// OpenMetrics is served when the scraper ranks it at least as high as plain text, as
/// Prometheus does by default (`application/openmetrics-text;version=1.0.0,...;q=0.5`).
pub fn negotiate(accept: Option<&str>, accept_encoding: Option<&str>) -> (Format, bool) {
    let mut om_q = 0.0f32;
    let mut text_q = 0.0f32;
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("q=") {
                q = v.parse().unwrap_or(0.0);
            } else if let Some(v) = p.strip_prefix("version=") {
                version = Some(v.to_string());
            }
        }
        match media.as_str() {
            // 0.0.1 was the draft; we emit 1.0.0, which parsers accepting 0.0.1 also read.
            "application/openmetrics-text"
                if matches!(version.as_deref(), None | Some("1.0.0") | Some("0.0.1")) =>
            {
                om_q = om_q.max(q)
            }
            "text/plain" | "*/*" | "text/*" => text_q = text_q.max(q),
            _ => {}
        }
    }
    let format = if om_q > 0.0 && om_q >= text_q {
        Format::OpenMetrics
    } else {
        Format::Text
    };
    let gzip = accept_encoding.is_some_and(|e| {
        e.split(',').any(|c| {
            let mut p = c.split(';').map(str::trim);
            let name = p.next().unwrap_or("");
            let q = p
                .find_map(|x| x.strip_prefix("q="))
                .map(|q| q.parse::<f32>().unwrap_or(0.0))
                .unwrap_or(1.0);
            (name.eq_ignore_ascii_case("gzip") || name == "*") && q > 0.0
        })
    });
    (format, gzip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_default_accept_gets_openmetrics() {
        let a = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            negotiate(Some(a), Some("gzip")),
            (Format::OpenMetrics, true)
        );
    }

    #[test]
    fn plain_and_missing_accept_get_text() {
        assert_eq!(negotiate(None, None), (Format::Text, false));
        assert_eq!(
            negotiate(Some("text/plain"), Some("identity")),
            (Format::Text, false)
        );
        assert_eq!(
            negotiate(Some("*/*"), Some("gzip;q=0")),
            (Format::Text, false)
        );
    }
}
