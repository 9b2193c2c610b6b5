//! The Copilot usage-metrics API's wire types: report links, and the records in the report
//! files (per-user daily rows, aggregate day totals, user-team rows), read tolerantly: a
//! number may come as a string, any field may be missing, and a file may be NDJSON, one
//! JSON array, or one object wrapping its rows in `day_totals` or `user_totals`.

use serde::{Deserialize, Deserializer};

/// `GET …/reports/<report>`: signed, expiring links to the report's files.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Links {
    #[serde(default)]
    pub download_links: Vec<String>,
    pub report_day: Option<String>,
    pub report_start_day: Option<String>,
    pub report_end_day: Option<String>,
}

impl Links {
    /// The last day the report covers.
    pub fn last_day(&self) -> Option<&str> {
        self.report_end_day
            .as_deref()
            .or(self.report_day.as_deref())
    }
}

fn num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

/// The counters every row and breakdown carries.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Counts {
    #[serde(default, deserialize_with = "num")]
    pub user_initiated_interaction_count: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub code_generation_activity_count: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub code_acceptance_activity_count: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub loc_suggested_to_add_sum: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub loc_suggested_to_delete_sum: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub loc_added_sum: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub loc_deleted_sum: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ByIde {
    #[serde(default)]
    pub ide: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ByFeature {
    #[serde(default)]
    pub feature: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ByLanguageFeature {
    #[serde(default)]
    pub language: String,
    #[serde(default)]
    pub feature: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ByModelFeature {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub feature: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// The breakdown arrays of a row.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Breakdown {
    #[serde(default)]
    pub totals_by_ide: Vec<ByIde>,
    #[serde(default)]
    pub totals_by_feature: Vec<ByFeature>,
    #[serde(default)]
    pub totals_by_language_feature: Vec<ByLanguageFeature>,
    #[serde(default)]
    pub totals_by_model_feature: Vec<ByModelFeature>,
}

/// One user's activity on one day.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UserRow {
    pub user_id: Option<u64>,
    pub user_login: Option<String>,
    pub day: Option<String>,
    #[serde(default)]
    pub used_chat: bool,
    #[serde(default)]
    pub used_agent: bool,
    #[serde(default)]
    pub used_cli: bool,
    #[serde(flatten)]
    pub counts: Counts,
    #[serde(flatten)]
    pub breakdown: Breakdown,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PullRequests {
    #[serde(default, deserialize_with = "num")]
    pub total_created: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub total_reviewed: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub total_created_by_copilot: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub total_reviewed_by_copilot: Option<f64>,
}

/// An org's or enterprise's totals of one day.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DayTotals {
    pub day: Option<String>,
    #[serde(default, deserialize_with = "num")]
    pub daily_active_users: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub weekly_active_users: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub monthly_active_users: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub monthly_active_chat_users: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub monthly_active_agent_users: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub daily_active_cli_users: Option<f64>,
    #[serde(flatten)]
    pub counts: Counts,
    #[serde(flatten)]
    pub breakdown: Breakdown,
    pub pull_requests: Option<PullRequests>,
}

/// A user's membership of a team on a day (`user-teams-1-day`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TeamRow {
    pub user_id: Option<u64>,
    pub user_login: Option<String>,
    pub day: Option<String>,
    pub slug: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Record {
    User(Box<UserRow>),
    Day(Box<DayTotals>),
    Team(TeamRow),
}

/// Why a record was left out; bounded, counted by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// A line or document that is not JSON.
    Malformed,
    /// JSON that is none of the known records.
    Unknown,
    /// A file that ends inside a record, or a document that is not JSON: the file is cut
    /// short or is not a report, so none of it can be trusted to be the whole report.
    Unreadable,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Unknown => "unknown_record",
            Rejected::Unreadable => "unreadable",
        }
    }
}

/// The records of one JSON value (a line, or a whole document).
pub fn records(v: serde_json::Value, out: &mut Vec<Result<Record, Rejected>>) {
    match v {
        serde_json::Value::Array(items) => {
            for i in items {
                records(i, out);
            }
        }
        serde_json::Value::Object(mut m) => {
            for wrapper in ["day_totals", "user_totals"] {
                if let Some(serde_json::Value::Array(rows)) = m.remove(wrapper) {
                    for r in rows {
                        records(r, out);
                    }
                    return;
                }
            }
            let has = |k: &str| m.contains_key(k);
            let v = serde_json::Value::Object(m.clone());
            let r = if has("slug") && has("team_id") {
                serde_json::from_value(v).map(Record::Team)
            } else if has("user_id") || has("user_login") {
                serde_json::from_value(v).map(|u| Record::User(Box::new(u)))
            } else if has("day") {
                serde_json::from_value(v).map(|d| Record::Day(Box::new(d)))
            } else {
                out.push(Err(Rejected::Unknown));
                return;
            };
            out.push(r.map_err(|_| Rejected::Malformed));
        }
        _ => out.push(Err(Rejected::Unknown)),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    /// Before the first line: NDJSON if it is a whole JSON value.
    #[default]
    Undecided,
    Lines,
    /// One document (pretty-printed); read at the end.
    Whole,
}

/// Reads a report file as it arrives: NDJSON line by line, or, when its first line is not a
/// whole JSON value (a pretty-printed object or array), the whole document at the end.
#[derive(Default)]
pub struct Reader {
    pending: Vec<u8>,
    /// The bytes so far, while the file may be one document.
    whole: Vec<u8>,
    mode: Mode,
    pub out: Vec<Result<Record, Rejected>>,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.mode != Mode::Lines {
            self.whole.extend_from_slice(chunk);
        }
        if self.mode == Mode::Whole {
            return;
        }
        self.pending.extend_from_slice(chunk);
        while self.mode != Mode::Whole
            && let Some(i) = self.pending.iter().position(|b| *b == b'\n')
        {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.line(&line);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let t = line.trim_ascii();
        if t.is_empty() {
            return;
        }
        match (serde_json::from_slice::<serde_json::Value>(t), self.mode) {
            (Ok(v), _) => {
                if self.mode == Mode::Undecided {
                    self.mode = Mode::Lines;
                    self.whole = Vec::new();
                }
                records(v, &mut self.out);
            }
            (Err(_), Mode::Undecided) => {
                self.mode = Mode::Whole;
                self.pending = Vec::new();
            }
            (Err(_), _) => self.out.push(Err(Rejected::Malformed)),
        }
    }

    /// The records of the whole file. A damaged line inside NDJSON is one rejected record;
    /// a last line or a whole document that does not parse is [`Rejected::Unreadable`].
    pub fn finish(mut self) -> Vec<Result<Record, Rejected>> {
        let rest = match self.mode {
            Mode::Whole => std::mem::take(&mut self.whole),
            _ => std::mem::take(&mut self.pending),
        };
        let t = rest.trim_ascii();
        if !t.is_empty() {
            match serde_json::from_slice::<serde_json::Value>(t) {
                Ok(v) => records(v, &mut self.out),
                Err(_) => self.out.push(Err(Rejected::Unreadable)),
            }
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, chunk: usize) -> Vec<Result<Record, Rejected>> {
        let mut r = Reader::new();
        for c in text.as_bytes().chunks(chunk) {
            r.feed(c);
        }
        r.finish()
    }

    #[test]
    fn ndjson_arrays_and_wrapped_documents_read_the_same() {
        let rows = r#"{"user_id": 1, "user_login": "a", "day": "2026-04-01", "loc_added_sum": "5"}
{"user_id": 2, "user_login": "b", "day": "2026-04-01"}
not json
"#;
        let got = read(rows, 7);
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0], Ok(Record::User(u)) if u.counts.loc_added_sum == Some(5.0)));
        assert_eq!(got[2].as_ref().err(), Some(&Rejected::Malformed));
        // Cut inside its last record, or a document cut anywhere: unreadable, not short.
        let cut = &rows[..rows.find("\"day\": \"2026-04-01\"}").unwrap()];
        let got = read(cut, 7);
        assert!(
            matches!(&got[..], [Ok(_), Err(Rejected::Unreadable)]),
            "{got:?}"
        );
        let pretty = "{\n  \"day_totals\": [\n    {\"day\": \"2026-04-01\", \"daily_active_users\": 3}\n  ]\n}\n";
        let got = read(pretty, 5);
        assert!(matches!(&got[..], [Ok(Record::Day(d))] if d.daily_active_users == Some(3.0)));
        let got = read(&pretty[..pretty.len() / 2], 5);
        assert!(matches!(&got[..], [Err(Rejected::Unreadable)]), "{got:?}");
        let array =
            r#"[{"user_id": 1, "team_id": 4, "slug": "web", "day": "2026-04-01"}, {"x": 1}]"#;
        let got = read(array, 100);
        assert!(matches!(&got[0], Ok(Record::Team(t)) if t.slug.as_deref() == Some("web")));
        assert_eq!(got[1].as_ref().err(), Some(&Rejected::Unknown));
    }
}
