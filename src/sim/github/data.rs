//! The world the fake serves: orgs of repos, each with commits, PRs and reviews, and issue
//! comments, generated from a seed so a run's data replays exactly.

use rand::Rng;
use rand::rngs::StdRng;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) const DAY: i64 = 86_400;

/// What to generate for one org.
#[derive(Clone, Debug)]
pub struct OrgSpec {
    pub name: String,
    pub repos: usize,
    /// Repos pushed in the last day (the first `active` repos).
    pub active: usize,
    pub users: usize,
    pub prs_min: usize,
    pub prs_max: usize,
    /// Adds an archived repo and an active fork, both excluded by default.
    pub with_excluded: bool,
    /// Adds `dependabot[bot]` activity, excluded by default.
    pub with_bot: bool,
}

impl OrgSpec {
    pub fn small(name: &str) -> OrgSpec {
        OrgSpec {
            name: name.into(),
            repos: 8,
            active: 5,
            users: 6,
            prs_min: 5,
            prs_max: 150,
            with_excluded: true,
            with_bot: true,
        }
    }

    /// docs/performance.md's standard org: 500 repos, 50 pushed in the last day, 200 users,
    /// 200 to 2,000 PRs of history per repo.
    pub fn standard(name: &str) -> OrgSpec {
        OrgSpec {
            name: name.into(),
            repos: 500,
            active: 50,
            users: 200,
            prs_min: 200,
            prs_max: 2000,
            with_excluded: false,
            with_bot: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Commit {
    pub sha: String,
    pub login: String,
    /// Committer date: what `since`/`until` filter on and windows count by.
    pub at: i64,
    /// Author date: earlier for rebased and cherry-picked commits.
    pub authored: i64,
    pub additions: i64,
    pub deletions: i64,
}

#[derive(Clone, Debug)]
pub struct Pr {
    pub number: u64,
    pub author: String,
    pub created: i64,
    pub updated: i64,
    pub merged: Option<i64>,
    pub reviews: Vec<(String, i64)>,
    /// The commit merging it into the default branch.
    pub merge_sha: Option<String>,
    /// Its own commits, oldest first.
    pub commits: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Comment {
    pub id: u64,
    pub login: String,
    pub created: i64,
}

#[derive(Clone, Debug)]
pub struct RepoData {
    pub name: String,
    pub archived: bool,
    pub fork: bool,
    pub pushed_at: i64,
    pub updated_at: i64,
    /// Newest first.
    pub commits: Vec<Commit>,
    /// By `updated` descending.
    pub prs: Vec<Pr>,
    /// By id ascending.
    pub comments: Vec<Comment>,
    pub(super) stats_version: u64,
    pub(super) stats_served: u64,
    pub(super) stats_202_left: u32,
}

impl RepoData {
    pub(super) fn touch(&mut self, t: i64) {
        self.updated_at = self.updated_at.max(t);
    }

    pub(super) fn sort(&mut self) {
        self.commits.sort_by_key(|c| std::cmp::Reverse(c.at));
        self.prs
            .sort_by(|a, b| b.updated.cmp(&a.updated).then(b.number.cmp(&a.number)));
    }
}

#[derive(Clone, Debug, Default)]
pub struct OrgData {
    pub users: Vec<String>,
    pub repos: Vec<RepoData>,
}

pub(super) fn gen_org(spec: &OrgSpec, now: i64, rng: &mut StdRng, next_id: &AtomicU64) -> OrgData {
    let users: Vec<String> = (0..spec.users).map(|i| format!("user{i:03}")).collect();
    let pick = |rng: &mut StdRng| users[rng.random_range(0..users.len())].clone();
    let mut repos = Vec::new();
    let mut specs: Vec<(String, bool, bool, bool)> = (0..spec.repos)
        .map(|i| (format!("repo-{i:03}"), i < spec.active, false, false))
        .collect();
    if spec.with_excluded {
        specs.push(("old-archived".into(), false, true, false));
        specs.push(("a-fork".into(), true, false, true));
    }
    for (name, active, archived, fork) in specs {
        let pushed = if active {
            now - rng.random_range(600..20 * 3600)
        } else {
            now - rng.random_range(2 * DAY..365 * DAY)
        };
        let mut r = RepoData {
            name,
            archived,
            fork,
            pushed_at: pushed,
            updated_at: pushed,
            commits: Vec::new(),
            prs: Vec::new(),
            comments: Vec::new(),
            stats_version: 1,
            stats_served: 0,
            stats_202_left: 0,
        };
        // History: commits in the month before the last push, the last one at the push.
        let n = rng.random_range(3..15);
        for k in 0..n {
            let at = if k == 0 {
                pushed
            } else {
                pushed - rng.random_range(0..30 * DAY)
            };
            if active && k > 0 && at > now - DAY && rng.random_bool(0.5) {
                continue;
            }
            let login = pick(rng);
            r.commits.push(Commit {
                sha: format!("{:040x}", next_id.fetch_add(1, Ordering::Relaxed)),
                login,
                at,
                authored: at,
                additions: rng.random_range(0..400),
                deletions: rng.random_range(0..200),
            });
        }
        if active {
            for _ in 0..rng.random_range(1..8) {
                r.commits.push(Commit {
                    sha: format!("{:040x}", next_id.fetch_add(1, Ordering::Relaxed)),
                    login: pick(rng),
                    at: now - rng.random_range(60..23 * 3600),
                    authored: 0,
                    additions: rng.random_range(1..300),
                    deletions: rng.random_range(0..100),
                });
            }
        }
        let total_prs = rng.random_range(spec.prs_min..=spec.prs_max.max(spec.prs_min));
        let recent = if active { rng.random_range(1..6) } else { 0 };
        let history_start = now - 730 * DAY;
        let last_old = (pushed - DAY).max(history_start + 1);
        for k in 0..total_prs {
            let number = (k + 1) as u64;
            let pr = if k + recent >= total_prs {
                let created = now - rng.random_range(3600..30 * 3600);
                let merged = (rng.random_bool(0.5))
                    .then(|| (created + rng.random_range(600..20_000)).min(now - 30));
                let reviews: Vec<(String, i64)> = (0..rng.random_range(0..4))
                    .map(|_| {
                        (
                            pick(rng),
                            (created + rng.random_range(60..30_000)).min(now - 20),
                        )
                    })
                    .collect();
                let updated = reviews
                    .iter()
                    .map(|x| x.1)
                    .chain(merged)
                    .fold(created, i64::max);
                Pr {
                    number,
                    author: pick(rng),
                    created,
                    updated,
                    merged,
                    reviews,
                    merge_sha: None,
                    commits: Vec::new(),
                }
            } else {
                let created = history_start
                    + ((last_old - history_start) as f64 * (k as f64 / total_prs as f64)) as i64;
                let merged = rng
                    .random_bool(0.7)
                    .then(|| created + rng.random_range(600..3 * DAY));
                let updated = merged.unwrap_or(created) + rng.random_range(0..DAY);
                let reviews = if rng.random_bool(0.5) {
                    vec![(pick(rng), created + 300)]
                } else {
                    Vec::new()
                };
                Pr {
                    number,
                    author: pick(rng),
                    created,
                    updated: updated.min(last_old),
                    merged: merged.map(|m| m.min(last_old)),
                    reviews,
                    merge_sha: None,
                    commits: Vec::new(),
                }
            };
            r.prs.push(pr);
        }
        for _ in 0..rng.random_range(0..5) {
            let created = pushed - rng.random_range(DAY..60 * DAY);
            r.comments.push(Comment {
                id: next_id.fetch_add(1, Ordering::Relaxed),
                login: pick(rng),
                created,
            });
        }
        if active {
            for _ in 0..rng.random_range(0..6) {
                let created = now - rng.random_range(60..23 * 3600);
                r.comments.push(Comment {
                    id: next_id.fetch_add(1, Ordering::Relaxed),
                    login: pick(rng),
                    created,
                });
            }
        }
        if spec.with_bot && active {
            r.commits.push(Commit {
                sha: format!("{:040x}", next_id.fetch_add(1, Ordering::Relaxed)),
                login: "dependabot[bot]".into(),
                at: now - 7200,
                authored: 0,
                additions: 3,
                deletions: 3,
            });
        }
        // A third of the commits were rebased or cherry-picked: authored up to two days
        // before they were committed.
        for c in &mut r.commits {
            let id = u64::from_str_radix(&c.sha[32..], 16).expect("hex sha");
            c.authored = if id % 3 == 0 {
                c.at - ((id % 47) as i64 + 1) * 3600
            } else {
                c.at
            };
        }
        r.comments.sort_by_key(|c| c.id);
        let last_commit = r.commits.iter().map(|c| c.at).max().unwrap_or(pushed);
        r.pushed_at = r.pushed_at.max(last_commit);
        r.touch(r.pushed_at);
        r.sort();
        repos.push(r);
    }
    OrgData { users, repos }
}
