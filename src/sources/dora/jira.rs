//! Jira webhooks: the wire shape (only the fields incidents need) and the pure reading of
//! one delivery into an observation of an issue.

use serde::Deserialize;

use super::config::IncidentFilter;

#[derive(Debug, Deserialize)]
struct Webhook {
    #[serde(rename = "webhookEvent", default)]
    event: Option<String>,
    #[serde(default)]
    timestamp: Option<serde_json::Value>,
    #[serde(default)]
    issue: Option<Issue>,
}

#[derive(Debug, Deserialize)]
struct Issue {
    key: Option<String>,
    #[serde(default)]
    fields: Option<Fields>,
}

#[derive(Debug, Default, Deserialize)]
struct Fields {
    created: Option<String>,
    resolutiondate: Option<String>,
    status: Option<Status>,
    issuetype: Option<Named>,
    priority: Option<Named>,
    project: Option<Project>,
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Status {
    #[serde(rename = "statusCategory")]
    category: Option<Category>,
}

#[derive(Debug, Deserialize)]
struct Category {
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Project {
    key: Option<String>,
}

/// What one delivery says about an issue that is an incident.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub issue: String,
    pub project: String,
    /// When the incident began: the issue's creation (time zone and milliseconds kept).
    pub created: f64,
    /// When it was restored: the resolution date, or the event's time when the status
    /// category is done without one; `None` while open (again).
    pub resolved: Option<f64>,
    /// The event's own time (Jira's `timestamp`), which orders deliveries.
    pub at: f64,
}

/// Why a delivery is not an incident observation; bounded, counted by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    Malformed,
    NoIssue,
    NoCreated,
    BadDate,
    Filtered,
}

impl Rejected {
    pub const ALL: &[Rejected] = &[
        Rejected::Malformed,
        Rejected::NoIssue,
        Rejected::NoCreated,
        Rejected::BadDate,
        Rejected::Filtered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::NoIssue => "no_issue",
            Rejected::NoCreated => "no_created",
            Rejected::BadDate => "bad_date",
            Rejected::Filtered => "filtered",
        }
    }
}

/// Jira's date-times: `2019-02-15T19:01:52.971-0800` (an offset without a colon, which RFC
/// 3339 does not allow), or RFC 3339 itself.
pub fn parse_date(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(t) = crate::timestamp::parse_rfc3339(s) {
        return Some(t);
    }
    let (head, tail) = s.split_at(s.len().checked_sub(5)?);
    let b = tail.as_bytes();
    if matches!(b[0], b'+' | b'-') && b[1..].iter().all(u8::is_ascii_digit) {
        return crate::timestamp::parse_rfc3339(&format!("{head}{}:{}", &tail[..3], &tail[3..]));
    }
    None
}

/// The event's time: Jira Cloud sends epoch milliseconds; older servers a date text.
fn event_time(v: Option<&serde_json::Value>) -> Option<f64> {
    match v? {
        serde_json::Value::Number(n) => n.as_f64().map(|ms| ms / 1000.0),
        serde_json::Value::String(s) => s
            .parse::<f64>()
            .ok()
            .map(|ms| ms / 1000.0)
            .or_else(|| parse_date(s)),
        _ => None,
    }
}

/// The webhook's event name, for logs.
pub fn event_name(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Webhook>(body).ok()?.event
}

/// Reads one delivery. `received_at` stands in for an event time Jira did not send.
pub fn observe(
    body: &[u8],
    received_at: f64,
    filter: &IncidentFilter,
) -> Result<Observation, Rejected> {
    let w: Webhook = serde_json::from_slice(body).map_err(|_| Rejected::Malformed)?;
    let issue = w.issue.ok_or(Rejected::NoIssue)?;
    let key = issue
        .key
        .filter(|k| !k.is_empty())
        .ok_or(Rejected::NoIssue)?;
    let f = issue.fields.unwrap_or_default();
    let created = f.created.as_deref().ok_or(Rejected::NoCreated)?;
    let created = parse_date(created).ok_or(Rejected::BadDate)?;
    let project = f
        .project
        .and_then(|p| p.key)
        .or_else(|| key.rsplit_once('-').map(|(p, _)| p.to_string()))
        .unwrap_or_default();
    let any = |want: &[String], have: &[&str]| {
        want.is_empty()
            || want
                .iter()
                .any(|w| have.iter().any(|h| h.eq_ignore_ascii_case(w)))
    };
    let issue_type = f.issuetype.and_then(|t| t.name).unwrap_or_default();
    let priority = f.priority.and_then(|p| p.name).unwrap_or_default();
    let labels: Vec<&str> = f.labels.iter().map(String::as_str).collect();
    if !any(&filter.issue_types, &[&issue_type])
        || !any(&filter.priorities, &[&priority])
        || !any(&filter.projects, &[&project])
        || !any(&filter.labels, &labels)
    {
        return Err(Rejected::Filtered);
    }
    let at = event_time(w.timestamp.as_ref()).unwrap_or(received_at);
    let done = f
        .status
        .and_then(|s| s.category)
        .and_then(|c| c.key)
        .is_some_and(|k| k == "done");
    let resolved = match f.resolutiondate.as_deref() {
        Some(r) => Some(parse_date(r).ok_or(Rejected::BadDate)?),
        None if done => Some(at),
        None => None,
    };
    Ok(Observation {
        issue: key,
        project,
        created,
        resolved,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jira_dates_keep_their_zone_and_milliseconds() {
        let a = parse_date("2019-02-15T19:01:52.971-0800").unwrap();
        let b = parse_date("2019-02-16T03:01:52.971Z").unwrap();
        assert!((a - b).abs() < 1e-6);
        assert!((parse_date("2019-02-16T03:01:52.971+0000").unwrap() - b).abs() < 1e-6);
        assert_eq!(parse_date("2018-1-11 13:0"), None);
        assert_eq!(parse_date(""), None);
    }

    fn body(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"webhookEvent":"jira:issue_updated","timestamp":1550286940507,
            "issue":{{"key":"OPS-7","fields":{{"created":"2019-02-15T19:01:52.971-0800",
            "issuetype":{{"name":"Incident"}},"priority":{{"name":"High"}},"labels":["sev1"],
            "project":{{"key":"OPS"}}{extra}}}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn an_incident_is_read_with_its_times() {
        let f = IncidentFilter::default();
        let o = observe(&body(""), 1.0, &f).unwrap();
        assert_eq!(o.issue, "OPS-7");
        assert_eq!(o.project, "OPS");
        assert_eq!(o.resolved, None);
        assert!((o.at - 1550286940.507).abs() < 1e-6);
        let o = observe(
            &body(r#","resolutiondate":"2019-02-15T19:15:40.470-0800""#),
            1.0,
            &f,
        )
        .unwrap();
        assert!((o.resolved.unwrap() - o.created - 827.499).abs() < 1e-6);
        // Done without a resolution date: restored at the event.
        let o = observe(
            &body(r#","status":{"statusCategory":{"key":"done"}}"#),
            1.0,
            &f,
        )
        .unwrap();
        assert_eq!(o.resolved, Some(o.at));
    }

    #[test]
    fn filters_and_rejections_are_named() {
        let only = |types: &[&str], labels: &[&str]| IncidentFilter {
            issue_types: types.iter().map(|s| s.to_string()).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(observe(&body(""), 1.0, &only(&["incident"], &[])).is_ok());
        assert_eq!(
            observe(&body(""), 1.0, &only(&["Bug"], &[])),
            Err(Rejected::Filtered)
        );
        assert_eq!(
            observe(&body(""), 1.0, &only(&[], &["sev2"])),
            Err(Rejected::Filtered)
        );
        assert_eq!(
            observe(b"[1]", 1.0, &only(&[], &[])),
            Err(Rejected::Malformed)
        );
        assert_eq!(
            observe(
                br#"{"webhookEvent":"comment_created"}"#,
                1.0,
                &only(&[], &[])
            ),
            Err(Rejected::NoIssue)
        );
        assert_eq!(
            observe(
                br#"{"issue":{"key":"A-1","fields":{}}}"#,
                1.0,
                &only(&[], &[])
            ),
            Err(Rejected::NoCreated)
        );
        assert_eq!(
            observe(
                br#"{"issue":{"key":"A-1","fields":{"created":"yesterday"}}}"#,
                1.0,
                &only(&[], &[])
            ),
            Err(Rejected::BadDate)
        );
    }
}
