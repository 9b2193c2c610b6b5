//! `/orgs/{org}/copilot/billing/seats`, every page: seats total, assigned and pending
//! cancellation; seats active in the last 1, 7 and 28 days by editor; and, opt-in, each
//! seat's last activity under the user label mode.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::CopilotConfig;
use super::aggregate::user_label;
use crate::metrics::{self, Labels, Sample};
use crate::sources::github::client::{self, Client};

#[derive(Deserialize)]
struct Page {
    total_seats: Option<u64>,
    #[serde(default)]
    seats: Vec<Seat>,
}

#[derive(Deserialize)]
struct Seat {
    assignee: Option<Assignee>,
    pending_cancellation_date: Option<String>,
    last_activity_at: Option<String>,
    last_activity_editor: Option<String>,
}

#[derive(Deserialize)]
struct Assignee {
    login: Option<String>,
    id: Option<u64>,
}

/// The editor of `vscode/1.77.3/copilot/1.86.82`: its first part.
fn editor(e: Option<&str>) -> String {
    e.and_then(|e| e.split('/').next())
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

pub async fn read(
    client: &Client,
    org: &str,
    now: i64,
    cfg: &CopilotConfig,
    secret: &[u8],
) -> Result<Vec<Sample>, client::Error> {
    let mut next = Some(format!("/orgs/{org}/copilot/billing/seats?per_page=100"));
    let mut total = None;
    let mut seats = Vec::new();
    while let Some(path) = next.take() {
        let page = client.get(&path, "copilot_seats", false).await?;
        let p: Page = serde_json::from_slice(&page.body).map_err(|e| client::Error::Decode {
            endpoint: "copilot_seats",
            message: e.to_string(),
        })?;
        total = total.or(p.total_seats);
        let n = p.seats.len();
        seats.extend(p.seats);
        // A page that adds nothing ends a pagination that would otherwise loop.
        if n > 0 {
            next = page.next;
        }
    }
    let mut out = Vec::new();
    let mut gauge = |family, values: &[&str], v: f64| {
        let l = Labels::new(family, values).expect("labels match the family");
        out.push(Sample::number(family, l, v));
    };
    let assigned = seats.iter().filter(|s| s.assignee.is_some()).count();
    let pending = seats
        .iter()
        .filter(|s| s.pending_cancellation_date.is_some())
        .count();
    gauge(
        metrics::DEVMETRICS_COPILOT_SEATS,
        &[org, "total"],
        total.unwrap_or(seats.len() as u64) as f64,
    );
    gauge(
        metrics::DEVMETRICS_COPILOT_SEATS,
        &[org, "assigned"],
        assigned as f64,
    );
    gauge(
        metrics::DEVMETRICS_COPILOT_SEATS,
        &[org, "pending_cancellation"],
        pending as f64,
    );
    let mut active: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for s in &seats {
        let Some(at) = s
            .last_activity_at
            .as_deref()
            .and_then(crate::timestamp::parse_rfc3339)
        else {
            continue;
        };
        let e = editor(s.last_activity_editor.as_deref());
        for (period, days) in [("1d", 1.0), ("7d", 7.0), ("28d", 28.0)] {
            if now as f64 - at <= days * 86_400.0 {
                *active.entry((period, e.clone())).or_default() += 1;
            }
        }
        if cfg.seat_activity_per_user
            && let Some(a) = &s.assignee
        {
            let user = user_label(cfg.user_label_mode, secret, a.login.as_deref(), a.id);
            gauge(
                metrics::DEVMETRICS_COPILOT_SEAT_LAST_ACTIVITY_TIMESTAMP_SECONDS,
                &[org, &user],
                at,
            );
        }
    }
    for ((period, e), n) in active {
        gauge(
            metrics::DEVMETRICS_COPILOT_SEATS_ACTIVE,
            &[org, period, &e],
            n as f64,
        );
    }
    Ok(out)
}
