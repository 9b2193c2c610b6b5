//! copilot-metrics-exporter's unprefixed gauges `{editor,language,stream,org}`, filled from
//! the organization's 1-day report as closely as the new data allows. Its source, the
//! `/copilot/metrics` API, was shut down on 2026-04-02; what no longer exists upstream
//! (`is_custom_model`, `total_chat_copy_events`, `total_chat_insertion_events`, per-model
//! series, engaged users per editor and language) is not made up.

use std::collections::BTreeMap;

use super::wire::{DayTotals, Record};
use crate::metrics::{self, FamilyId, Labels, Sample};

const COMPLETIONS: &str = "copilot_ide_code_completions";
const CHAT: &str = "copilot_ide_chat";

pub fn gauges(org: &str, records: &[Record]) -> Vec<Sample> {
    let Some(day) = records
        .iter()
        .filter_map(|r| match r {
            Record::Day(d) => Some(d.as_ref()),
            _ => None,
        })
        .max_by(|a, b| a.day.cmp(&b.day))
    else {
        return Vec::new();
    };
    let mut out: BTreeMap<(FamilyId, String, String, &'static str), f64> = BTreeMap::new();
    let mut set =
        |f: FamilyId, editor: &str, language: &str, stream: &'static str, v: Option<f64>| {
            if let Some(v) = v {
                *out.entry((f, editor.to_string(), language.to_string(), stream))
                    .or_default() += v;
            }
        };
    fill(day, &mut set);
    out.into_iter()
        .map(|((f, editor, language, stream), v)| {
            let l = Labels::new(f, &[&editor, &language, stream, org]).expect("four labels");
            Sample::number(f, l, v)
        })
        .collect()
}

fn fill(d: &DayTotals, set: &mut impl FnMut(FamilyId, &str, &str, &'static str, Option<f64>)) {
    set(
        metrics::TOTAL_ACTIVE_USERS,
        "",
        "",
        "",
        d.daily_active_users,
    );
    set(
        metrics::TOTAL_ENGAGED_USERS,
        "",
        "",
        "",
        d.daily_active_users,
    );
    set(
        metrics::TOTAL_ENGAGED_USERS,
        "",
        "",
        CHAT,
        d.monthly_active_chat_users,
    );
    // The code-completion families and the count each takes.
    let code = |c: &super::wire::Counts| {
        [
            (
                metrics::TOTAL_CODE_SUGGESTIONS,
                c.code_generation_activity_count,
            ),
            (
                metrics::TOTAL_CODE_ACCEPTANCES,
                c.code_acceptance_activity_count,
            ),
            (
                metrics::TOTAL_CODE_LINES_SUGGESTED,
                c.loc_suggested_to_add_sum,
            ),
            (metrics::TOTAL_CODE_LINES_ACCEPTED, c.loc_added_sum),
        ]
    };
    for l in &d.breakdown.totals_by_language_feature {
        if l.feature == "code_completion" {
            for (f, v) in code(&l.counts) {
                set(f, "", &l.language, COMPLETIONS, v);
            }
        }
    }
    for i in &d.breakdown.totals_by_ide {
        for (f, v) in code(&i.counts) {
            set(f, &i.ide, "", COMPLETIONS, v);
        }
    }
    for f in &d.breakdown.totals_by_feature {
        if f.feature.starts_with("chat_panel") {
            set(
                metrics::TOTAL_CHATS,
                "",
                "",
                CHAT,
                f.counts.user_initiated_interaction_count,
            );
        }
    }
}
