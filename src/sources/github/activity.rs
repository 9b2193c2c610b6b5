//! Contributor activity: wire payloads → per-user events of one repo → the eight
//! `gh_activity_*` series of an exact window. Pure: no I/O here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::config::{ActivityConfig, UserLabelMode, glob_match};
use super::wire;
use crate::metrics::Sample;
use crate::metrics::{self, FamilyId, Labels};

/// A repo's events, reduced to who did what when (unix seconds). Kept in the store between
/// cycles so an unchanged repo costs no request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RepoEvents {
    /// The span the lists were fetched for.
    pub since: i64,
    pub until: i64,
    pub commits: Vec<(String, i64)>,
    pub prs: Vec<PrEvent>,
    pub reviews: Vec<(String, i64)>,
    pub comments: Vec<(String, i64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrEvent {
    pub author: String,
    pub created: i64,
    pub merged: Option<i64>,
}

/// LOC of the last complete statistics week, per contributor.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Loc {
    pub week_start: i64,
    pub fetched_at: i64,
    pub users: BTreeMap<String, (i64, i64)>,
}

/// The login a commit counts for, as github-stats-exporter attributes it: the linked GitHub
/// user (author, then committer), then a noreply address, then the email's local part.
pub fn commit_user(c: &wire::Commit) -> String {
    if let Some(u) = c.author.as_ref().or(c.committer.as_ref()) {
        return u.login.clone();
    }
    let emails = [
        c.commit.author.as_ref().and_then(|a| a.email.clone()),
        c.commit.committer.as_ref().and_then(|a| a.email.clone()),
    ];
    for e in emails.iter().flatten() {
        let lower = e.to_ascii_lowercase();
        if let Some(local) = lower.strip_suffix("@users.noreply.github.com") {
            let local = &e[..local.len()];
            let login = local.split_once('+').map(|(_, l)| l).unwrap_or(local);
            if !login.is_empty() {
                return login.to_string();
            }
        }
    }
    for e in emails.iter().flatten() {
        let local = e.split('@').next().unwrap_or("").to_ascii_lowercase();
        // Runs of other characters become one '-', trimmed at both ends.
        let mut clean = String::with_capacity(local.len());
        for ch in local.chars() {
            if ch.is_ascii_alphanumeric() || "._-".contains(ch) {
                clean.push(ch);
            } else if !clean.ends_with('-') {
                clean.push('-');
            }
        }
        let clean = clean.trim_matches('-');
        if !clean.is_empty() {
            return clean.to_string();
        }
    }
    let named = [&c.commit.author, &c.commit.committer].iter().any(|a| {
        a.as_ref()
            .and_then(|a| a.name.as_deref())
            .is_some_and(|n| !n.is_empty())
    });
    if named {
        "unlinked_git_author".into()
    } else {
        "unattributed_commit".into()
    }
}

fn login(u: &Option<wire::User>) -> String {
    u.as_ref()
        .map(|u| u.login.clone())
        .unwrap_or_else(|| "unknown".into())
}

impl RepoEvents {
    pub fn from_wire(
        since: i64,
        until: i64,
        commits: &[wire::Commit],
        pulls: &[wire::Pull],
        reviews: &[wire::Review],
        comments: &[wire::IssueComment],
    ) -> RepoEvents {
        let t = |s: &str| wire::parse_time(s);
        RepoEvents {
            since,
            until,
            commits: commits
                .iter()
                .filter_map(|c| {
                    // GitHub's `since`/`until` select by committer date; counting by the
                    // same date keeps a rebased or cherry-picked commit in its window.
                    let d = [&c.commit.committer, &c.commit.author]
                        .into_iter()
                        .find_map(|a| a.as_ref()?.date.as_deref().and_then(t))?;
                    Some((commit_user(c), d))
                })
                .collect(),
            prs: pulls
                .iter()
                .filter_map(|p| {
                    Some(PrEvent {
                        author: login(&p.user),
                        created: t(&p.created_at)?,
                        merged: p.merged_at.as_deref().and_then(t),
                    })
                })
                .collect(),
            reviews: reviews
                .iter()
                .filter_map(|r| Some((login(&r.user), t(r.submitted_at.as_deref()?)?)))
                .collect(),
            comments: comments
                .iter()
                .filter_map(|c| Some((login(&c.user), t(&c.created_at)?)))
                .collect(),
        }
    }
}

impl Loc {
    /// The latest complete week in the payload (`w + 7d <= now`; on GitHub the Sunday before
    /// last) of every contributor with activity in it. `week_start` records the week the
    /// values are for, as computed from `now`, so the cache turns over with the calendar.
    pub fn from_stats(stats: &[wire::ContributorStats], now: i64) -> Loc {
        let week = wire::week_start(now) - 7 * 86_400;
        let latest = stats
            .iter()
            .flat_map(|s| s.weeks.iter())
            .map(|w| w.w)
            .filter(|w| w + 7 * 86_400 <= now)
            .max();
        let mut users = BTreeMap::new();
        for s in stats {
            let who = login(&s.author);
            if let Some(w) = s.weeks.iter().find(|w| Some(w.w) == latest)
                && (w.a != 0 || w.d != 0 || w.c != 0)
            {
                let e = users.entry(who).or_insert((0, 0));
                e.0 += w.a;
                e.1 += w.d;
            }
        }
        Loc {
            week_start: week,
            fetched_at: now,
            users,
        }
    }
}

impl Loc {
    /// GitHub answers stats for very large repos with commit counts but zero line counts.
    pub fn zeroed(stats: &[wire::ContributorStats], now: i64) -> bool {
        let week = wire::week_start(now) - 7 * 86_400;
        let (mut a, mut d, mut c) = (0, 0, 0);
        for w in stats
            .iter()
            .flat_map(|s| s.weeks.iter())
            .filter(|w| w.w == week)
        {
            a += w.a;
            d += w.d;
            c += w.c;
        }
        c > 0 && a == 0 && d == 0
    }

    /// The last complete week from commit details (the fallback for large repos).
    pub fn from_commits(details: &[wire::CommitDetail], week_start: i64, now: i64) -> Loc {
        let mut users = BTreeMap::new();
        for d in details {
            let e = users.entry(commit_user(&d.commit)).or_insert((0, 0));
            if let Some(s) = &d.stats {
                e.0 += s.additions;
                e.1 += s.deletions;
            }
        }
        Loc {
            week_start,
            fetched_at: now,
            users,
        }
    }
}

/// Per-user values of one repo for one window, before labelling.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserActivity {
    pub commits: u64,
    pub prs_opened: u64,
    pub prs_merged: u64,
    pub reviews: u64,
    pub comments: u64,
    pub loc_added: Option<i64>,
    pub loc_removed: Option<i64>,
    pub last_event: Option<i64>,
}

/// Counts events in `[start, end]` (inclusive, as the replaced tool's window).
pub fn compute(
    ev: &RepoEvents,
    loc: Option<&Loc>,
    start: i64,
    end: i64,
) -> BTreeMap<String, UserActivity> {
    let mut out: BTreeMap<String, UserActivity> = BTreeMap::new();
    let inw = |t: i64| t >= start && t <= end;
    let touch = |out: &mut BTreeMap<String, UserActivity>, u: &str, t: i64| {
        let e = out.entry(u.to_string()).or_default();
        e.last_event = Some(e.last_event.map_or(t, |x| x.max(t)));
    };
    for (u, t) in &ev.commits {
        if inw(*t) {
            touch(&mut out, u, *t);
            out.get_mut(u).expect("touched").commits += 1;
        }
    }
    for p in &ev.prs {
        if inw(p.created) {
            touch(&mut out, &p.author, p.created);
            out.get_mut(&p.author).expect("touched").prs_opened += 1;
        }
        if let Some(m) = p.merged
            && inw(m)
        {
            touch(&mut out, &p.author, m);
            out.get_mut(&p.author).expect("touched").prs_merged += 1;
        }
    }
    for (u, t) in &ev.reviews {
        if inw(*t) {
            touch(&mut out, u, *t);
            out.get_mut(u).expect("touched").reviews += 1;
        }
    }
    for (u, t) in &ev.comments {
        if inw(*t) {
            touch(&mut out, u, *t);
            out.get_mut(u).expect("touched").comments += 1;
        }
    }
    if let Some(loc) = loc {
        for (u, (a, d)) in &loc.users {
            let e = out.entry(u.clone()).or_default();
            e.loc_added = Some(*a);
            e.loc_removed = Some(*d);
        }
    }
    out
}

/// User filters and label mode.
pub struct Users<'a> {
    pub cfg: &'a ActivityConfig,
}

impl Users<'_> {
    pub fn keep(&self, login: &str) -> bool {
        if !self.cfg.include_bots && login.ends_with("[bot]") {
            return false;
        }
        if !self.cfg.user_include.is_empty()
            && !self.cfg.user_include.iter().any(|g| glob_match(g, login))
        {
            return false;
        }
        !self.cfg.user_exclude.iter().any(|g| glob_match(g, login))
    }

    /// `login`, a stable truncated HMAC-SHA256 of it, or `none` (values then sum per repo).
    pub fn label(&self, login: &str) -> String {
        match self.cfg.user_label_mode {
            UserLabelMode::Login => login.to_string(),
            UserLabelMode::None => "none".to_string(),
            UserLabelMode::Hashed => crate::metrics::hashed_label(
                self.cfg
                    .user_label_secret
                    .as_ref()
                    .map(|s| s.expose().as_bytes())
                    .unwrap_or_default(),
                login,
            ),
        }
    }
}

pub struct Families {
    pub commits: FamilyId,
    pub prs_opened: FamilyId,
    pub prs_merged: FamilyId,
    pub reviews: FamilyId,
    pub comments: FamilyId,
    pub loc_added: FamilyId,
    pub loc_removed: FamilyId,
    pub last_event: FamilyId,
}

impl Families {
    pub fn get() -> Families {
        Families {
            commits: metrics::GH_ACTIVITY_COMMITS_24H,
            prs_opened: metrics::GH_ACTIVITY_PRS_OPENED_24H,
            prs_merged: metrics::GH_ACTIVITY_PRS_MERGED_24H,
            reviews: metrics::GH_ACTIVITY_REVIEWS_SUBMITTED_24H,
            comments: metrics::GH_ACTIVITY_ISSUE_COMMENTS_24H,
            loc_added: metrics::GH_ACTIVITY_LOC_ADDED_WEEKLY,
            loc_removed: metrics::GH_ACTIVITY_LOC_REMOVED_WEEKLY,
            last_event: metrics::GH_ACTIVITY_LAST_EVENT_UNIXTIME,
        }
    }
}

/// The repo's series: one per non-zero value, so a quiet user has none.
pub fn samples(
    org: &str,
    repo: &str,
    acts: &BTreeMap<String, UserActivity>,
    users: &Users,
) -> Vec<Sample> {
    let f = Families::get();
    // Several logins may share a label (mode none): values add up, last event is the max.
    let mut merged: BTreeMap<String, UserActivity> = BTreeMap::new();
    for (login, a) in acts {
        if !users.keep(login) {
            continue;
        }
        let m = merged.entry(users.label(login)).or_default();
        m.commits += a.commits;
        m.prs_opened += a.prs_opened;
        m.prs_merged += a.prs_merged;
        m.reviews += a.reviews;
        m.comments += a.comments;
        if let Some(x) = a.loc_added {
            m.loc_added = Some(m.loc_added.unwrap_or(0) + x);
        }
        if let Some(x) = a.loc_removed {
            m.loc_removed = Some(m.loc_removed.unwrap_or(0) + x);
        }
        m.last_event = m.last_event.max(a.last_event);
    }
    let mut out = Vec::new();
    for (user, a) in &merged {
        // Every activity family is labelled {org, repo, user}: the user's series share one
        // label set rather than hold a copy each.
        let labels = Labels::new(f.commits, &[org, repo, user.as_str()]).expect("three labels");
        let mut push = |fid, v: f64| {
            debug_assert_eq!(
                metrics::family(fid).labels,
                metrics::family(f.commits).labels
            );
            out.push(Sample::number(fid, labels.clone(), v))
        };
        for (fid, v) in [
            (f.commits, a.commits),
            (f.prs_opened, a.prs_opened),
            (f.prs_merged, a.prs_merged),
            (f.reviews, a.reviews),
            (f.comments, a.comments),
        ] {
            if v > 0 {
                push(fid, v as f64);
            }
        }
        if let (Some(ad), Some(rm)) = (a.loc_added, a.loc_removed) {
            push(f.loc_added, ad as f64);
            push(f.loc_removed, rm as f64);
        }
        if let Some(t) = a.last_event {
            push(f.last_event, t as f64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(json: &str) -> wire::Commit {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn commit_attribution_chain() {
        let c = commit(
            r#"{"sha":"1","commit":{"author":{"name":"A","email":"7+alice@users.noreply.github.com","date":"2026-02-19T10:00:00Z"},"committer":null},"author":null,"committer":null}"#,
        );
        assert_eq!(commit_user(&c), "alice");
        let c = commit(
            r#"{"sha":"1","commit":{"author":{"name":"B","email":"Bob Smith@Corp.example","date":"2026-02-19T10:00:00Z"},"committer":null},"author":null,"committer":null}"#,
        );
        assert_eq!(commit_user(&c), "bob-smith");
        let c = commit(
            r#"{"sha":"1","commit":{"author":null,"committer":null},"author":{"login":"carol"},"committer":null}"#,
        );
        assert_eq!(commit_user(&c), "carol");
    }

    #[test]
    fn the_window_is_exact_and_inclusive() {
        let ev = RepoEvents {
            commits: vec![("a".into(), 100), ("a".into(), 200), ("b".into(), 99)],
            prs: vec![PrEvent {
                author: "b".into(),
                created: 150,
                merged: Some(201),
            }],
            ..Default::default()
        };
        let acts = compute(&ev, None, 100, 200);
        assert_eq!(acts["a"].commits, 2);
        assert_eq!(acts["a"].last_event, Some(200));
        assert_eq!(acts["b"].commits, 0);
        assert_eq!(acts["b"].prs_opened, 1);
        assert_eq!(acts["b"].prs_merged, 0);
    }

    /// github-stats-exporter's attribution test vector.
    #[test]
    fn attribution_cases_of_the_replaced_tool() {
        let Some(dir) = crate::sim::research_dir("seed0/fixtures/expected") else {
            return;
        };
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("commit_attribution_cases.json")).unwrap(),
        )
        .unwrap();
        for case in v["cases"].as_array().unwrap() {
            let i = &case["input"];
            let s = |k: &str| i.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let user = |k: &str| s(k).map(|login| wire::User { login });
            let actor = |name: &str, email: &str| {
                (s(name).is_some() || s(email).is_some()).then(|| wire::GitActor {
                    name: s(name),
                    email: s(email),
                    date: None,
                })
            };
            let c = wire::Commit {
                sha: "x".into(),
                commit: wire::CommitInner {
                    author: actor("author_name", "author_email"),
                    committer: actor("committer_name", "committer_email"),
                },
                author: user("author_login"),
                committer: user("committer_login"),
            };
            assert_eq!(
                commit_user(&c),
                case["expected_user"].as_str().unwrap(),
                "{case}"
            );
        }
    }

    /// The replaced tool's expected leader-cycle series for its e2e fixtures (alice, repo-a).
    #[test]
    fn golden_cycle_of_the_replaced_tool() {
        let Some(dir) = crate::sim::research_dir("seed0/fixtures") else {
            return;
        };
        let read = |f: &str| std::fs::read(dir.join("github").join(f)).unwrap();
        let now = wire::parse_time("2026-02-19T12:00:00Z").unwrap();
        let commits: Vec<wire::Commit> =
            serde_json::from_slice(&read("repos_cam3ron2_repo-a_commits.json")).unwrap();
        let pulls: Vec<wire::Pull> =
            serde_json::from_slice(&read("repos_cam3ron2_repo-a_pulls.json")).unwrap();
        let reviews: Vec<wire::Review> =
            serde_json::from_slice(&read("repos_cam3ron2_repo-a_pulls_101_reviews.json")).unwrap();
        let comments: Vec<wire::IssueComment> =
            serde_json::from_slice(&read("repos_cam3ron2_repo-a_issues_comments.json")).unwrap();
        let stats: Vec<wire::ContributorStats> =
            serde_json::from_slice(&read("repos_cam3ron2_repo-a_stats_contributors.json")).unwrap();
        let ev = RepoEvents::from_wire(now - 86_400, now, &commits, &pulls, &reviews, &comments);
        let loc = Loc::from_stats(&stats, now);
        let acts = compute(&ev, Some(&loc), now - 86_400, now);
        let cfg = ActivityConfig {
            enabled: true,
            search: true,
            include_archived: false,
            include_forks: false,
            include_bots: false,
            user_include: vec![],
            user_exclude: vec![],
            user_label_mode: UserLabelMode::Login,
            user_label_secret: None,
            series_budget_per_org: 100,
        };
        let all = samples("cam3ron2", "repo-a", &acts, &Users { cfg: &cfg });
        // A user's series share one label set.
        for a in &all {
            for b in &all {
                assert_eq!(a.labels == b.labels, a.labels.shares(&b.labels));
            }
        }
        let got: BTreeMap<(String, String), f64> = all
            .iter()
            .map(|s| {
                (
                    (
                        metrics::family(s.family).name.to_string(),
                        s.labels.as_str().to_string(),
                    ),
                    s.value.as_f64().unwrap(),
                )
            })
            .collect();
        let want: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("expected/leader_cycle_cam3ron2_repo-a_alice.json")).unwrap(),
        )
        .unwrap();
        let want: BTreeMap<(String, String), f64> = want["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str().unwrap().starts_with("gh_activity_"))
            .map(|s| {
                (
                    (
                        s["name"].as_str().unwrap().to_string(),
                        "org=\"cam3ron2\",repo=\"repo-a\",user=\"alice\"".to_string(),
                    ),
                    s["value"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hashed_labels_are_stable_and_keyed() {
        let mut cfg = ActivityConfig {
            enabled: true,
            search: true,
            include_archived: false,
            include_forks: false,
            include_bots: false,
            user_include: vec![],
            user_exclude: vec!["ex*".into()],
            user_label_mode: UserLabelMode::Hashed,
            user_label_secret: Some(crate::config::Secret::new("s1")),
            series_budget_per_org: 10,
        };
        let u = Users { cfg: &cfg };
        let h1 = u.label("alice");
        assert_eq!(h1.len(), 16);
        assert_eq!(h1, u.label("alice"));
        assert!(!u.keep("renovate[bot]"));
        assert!(!u.keep("extern"));
        assert!(u.keep("alice"));
        cfg.user_label_secret = Some(crate::config::Secret::new("s2"));
        assert_ne!(Users { cfg: &cfg }.label("alice"), h1);
    }
}
