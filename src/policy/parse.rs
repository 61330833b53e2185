//! Parsing of what humans and agents write: `Blocked by` clauses in issue bodies, priority
//! labels, and commit messages (the `AFK-Run:` trailer and `Closes|Fixes|Resolves #N`).
//! Pure functions over text; never panic on any input.

use std::sync::LazyLock;

use regex::Regex;

/// A reference to an issue, in the same repo (`#N`) or qualified (`owner/repo#N`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssueRef {
    /// `owner/name` when qualified; `None` means "the repo the text came from".
    pub repo: Option<String>,
    /// Issue number.
    pub number: u64,
}

impl IssueRef {
    /// A same-repo reference.
    pub fn local(number: u64) -> Self {
        Self { repo: None, number }
    }

    /// A qualified reference.
    pub fn qualified(repo: impl Into<String>, number: u64) -> Self {
        Self {
            repo: Some(repo.into()),
            number,
        }
    }

    /// The repo this reference points at, given the repo the text came from.
    pub fn repo_or<'a>(&'a self, home: &'a str) -> &'a str {
        self.repo.as_deref().unwrap_or(home)
    }

    /// Whether this points at `repo#number` as seen from `home` (repo names compare
    /// case-insensitively, as GitHub does).
    pub fn points_at(&self, home: &str, repo: &str, number: u64) -> bool {
        self.number == number && self.repo_or(home).eq_ignore_ascii_case(repo)
    }

    /// `#N` for a same-repo reference, `owner/repo#N` otherwise.
    pub fn display(&self, home: &str) -> String {
        match &self.repo {
            Some(r) if !r.eq_ignore_ascii_case(home) => format!("{r}#{}", self.number),
            _ => format!("#{}", self.number),
        }
    }
}

static BLOCKED_BY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bblocked\s+by\b").expect("static regex"));
/// An issue reference at the start of the input.
static REF_AT_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:([A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}))?#([0-9]{1,12})\b")
        .expect("static regex")
});
/// Separators allowed between references inside one clause.
static SEPARATOR_AT_START: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?i)(?:[\s,;:&+]+|and\b|or\b)").expect("static regex"));

/// Parse the references of `Blocked by` clauses: one clause per line, case-insensitive,
/// several references per clause (`Blocked by #3, #4 and acme/lib#5`). Only references inside
/// a clause count: the clause ends at the first word that is not a reference or a separator.
/// Lines inside fenced code blocks are ignored. The result is de-duplicated, in order.
pub fn parse_blockers(body: &str) -> Vec<IssueRef> {
    let mut refs: Vec<IssueRef> = vec![];
    let mut in_fence = false;
    for line in body.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        for clause in BLOCKED_BY.find_iter(line) {
            let mut rest = &line[clause.end()..];
            loop {
                if let Some(sep) = SEPARATOR_AT_START.find(rest) {
                    rest = &rest[sep.end()..];
                    continue;
                }
                let Some(caps) = REF_AT_START.captures(rest) else {
                    break;
                };
                let whole = caps.get(0).map_or(0, |m| m.end());
                if let Some(number) = caps
                    .get(2)
                    .and_then(|m| m.as_str().parse::<u64>().ok())
                    .filter(|n| *n > 0)
                {
                    let r = IssueRef {
                        repo: caps.get(1).map(|m| m.as_str().to_string()),
                        number,
                    };
                    if !refs.contains(&r) {
                        refs.push(r);
                    }
                }
                rest = &rest[whole..];
            }
        }
    }
    refs
}

static PRIORITY_LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?i)(?:priority\s*:\s*([0-9]{1,4})|p([0-9]{1,4}))$").expect("static regex")
});

/// The priority of an issue from its labels: the lowest number among `priority:N` and `PN`
/// labels (case-insensitive); `None` when no label carries one.
pub fn parse_priority<S: AsRef<str>>(labels: &[S]) -> Option<u32> {
    labels
        .iter()
        .filter_map(|l| {
            let caps = PRIORITY_LABEL.captures(l.as_ref().trim())?;
            caps.get(1).or_else(|| caps.get(2))?.as_str().parse::<u32>().ok()
        })
        .min()
}

/// What a commit message says about the AFK loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitRefs {
    /// Values of `AFK-Run:` trailers.
    pub afk_runs: Vec<String>,
    /// Issues named by `close|closes|closed|fix|fixes|fixed|resolve|resolves|resolved`.
    pub closes: Vec<IssueRef>,
}

static AFK_RUN_TRAILER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?im)^\s*afk-run\s*:\s*(\S+)\s*$").expect("static regex"));
static CLOSING_KEYWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\b:?\s+(?:([A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}))?#([0-9]{1,12})\b",
    )
    .expect("static regex")
});

/// Parse a commit message.
pub fn parse_commit_message(message: &str) -> CommitRefs {
    let mut refs = CommitRefs::default();
    for caps in AFK_RUN_TRAILER.captures_iter(message) {
        let value = caps[1].to_string();
        if !refs.afk_runs.contains(&value) {
            refs.afk_runs.push(value);
        }
    }
    for caps in CLOSING_KEYWORD.captures_iter(message) {
        let Some(number) = caps[2].parse::<u64>().ok().filter(|n| *n > 0) else {
            continue;
        };
        let r = IssueRef {
            repo: caps.get(1).map(|m| m.as_str().to_string()),
            number,
        };
        if !refs.closes.contains(&r) {
            refs.closes.push(r);
        }
    }
    refs
}

/// Whether a commit on `repo` belongs to the run: it carries the run's `AFK-Run:` trailer or
/// closes the run's issue (same-repo `#N` or qualified `owner/repo#N`).
pub fn commit_belongs_to_run(message: &str, repo: &str, issue: u64, run_name: &str) -> bool {
    let refs = parse_commit_message(message);
    refs.afk_runs.iter().any(|r| r == run_name) || refs.closes.iter().any(|r| r.points_at(repo, repo, issue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blocked_by_same_repo_and_qualified() {
        assert_eq!(parse_blockers("Blocked by #3"), vec![IssueRef::local(3)]);
        assert_eq!(
            parse_blockers("blocked by acme/lib#12"),
            vec![IssueRef::qualified("acme/lib", 12)]
        );
        assert_eq!(parse_blockers("BLOCKED BY: #7"), vec![IssueRef::local(7)]);
    }

    #[test]
    fn several_refs_per_clause() {
        assert_eq!(
            parse_blockers("Blocked by #3, #4 and acme/lib#5; #6"),
            vec![
                IssueRef::local(3),
                IssueRef::local(4),
                IssueRef::qualified("acme/lib", 5),
                IssueRef::local(6)
            ]
        );
    }

    #[test]
    fn only_refs_inside_the_clause_count() {
        assert_eq!(
            parse_blockers("See #1. Blocked by #2 because #9 is flaky"),
            vec![IssueRef::local(2)]
        );
        assert_eq!(parse_blockers("Related to #4\nFixes #5"), vec![]);
        assert_eq!(parse_blockers("unblocked by #4"), vec![], "word boundary");
    }

    #[test]
    fn one_clause_per_line_and_duplicates_removed() {
        let body = "Intro\n- Blocked by #3\n- blocked by #3, #8\n\nDone.";
        assert_eq!(parse_blockers(body), vec![IssueRef::local(3), IssueRef::local(8)]);
    }

    #[test]
    fn code_fences_are_ignored() {
        let body = "```\nBlocked by #1\n```\nBlocked by #2";
        assert_eq!(parse_blockers(body), vec![IssueRef::local(2)]);
    }

    #[test]
    fn malformed_refs_are_ignored() {
        assert_eq!(parse_blockers("Blocked by #"), vec![]);
        assert_eq!(parse_blockers("Blocked by #0"), vec![]);
        assert_eq!(parse_blockers("Blocked by #12abc"), vec![]);
        assert_eq!(parse_blockers("Blocked by #99999999999999999999"), vec![]);
    }

    #[test]
    fn priority_labels() {
        assert_eq!(parse_priority(&["priority:2"]), Some(2));
        assert_eq!(parse_priority(&["Priority: 3"]), Some(3));
        assert_eq!(parse_priority(&["P0"]), Some(0));
        assert_eq!(
            parse_priority(&["p1", "priority:0", "bug"]),
            Some(0),
            "lowest wins"
        );
        assert_eq!(parse_priority(&["bug", "ready-for-agent"]), None);
        assert_eq!(
            parse_priority(&["P1x", "priority:", "pp1", "priority:high"]),
            None
        );
        assert_eq!(parse_priority::<&str>(&[]), None);
    }

    #[test]
    fn commit_trailer_and_closing_refs() {
        let msg = "Retry webhooks\n\nCloses #42, fixes acme/lib#7\nresolved #8\n\nAFK-Run: acme-app-42-1\n";
        let refs = parse_commit_message(msg);
        assert_eq!(refs.afk_runs, vec!["acme-app-42-1"]);
        assert_eq!(
            refs.closes,
            vec![
                IssueRef::local(42),
                IssueRef::qualified("acme/lib", 7),
                IssueRef::local(8)
            ]
        );
    }

    #[test]
    fn commit_matching() {
        assert!(commit_belongs_to_run("x\n\nAFK-Run: r-1", "acme/app", 42, "r-1"));
        assert!(commit_belongs_to_run("Fixes #42", "acme/app", 42, "r-1"));
        assert!(commit_belongs_to_run("Fixes ACME/App#42", "acme/app", 42, "r-1"));
        assert!(!commit_belongs_to_run(
            "Fixes acme/other#42",
            "acme/app",
            42,
            "r-1"
        ));
        assert!(!commit_belongs_to_run("Fixes #420", "acme/app", 42, "r-1"));
        assert!(!commit_belongs_to_run("Mentions #42 only", "acme/app", 42, "r-1"));
        assert!(!commit_belongs_to_run("AFK-Run: r-10", "acme/app", 42, "r-1"));
        assert!(
            !commit_belongs_to_run("prefixes #42", "acme/app", 42, "r-1"),
            "word boundary"
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,400}") {
            let _ = parse_blockers(&s);
            let _ = parse_commit_message(&s);
            let _ = parse_priority(&[s.as_str()]);
        }

        #[test]
        fn every_listed_ref_is_found(nums in proptest::collection::vec(1u64..100_000, 1..6)) {
            let list: Vec<String> = nums.iter().map(|n| format!("#{n}")).collect();
            let body = format!("Intro #999999\nBlocked by {}\n", list.join(", "));
            let mut expected: Vec<IssueRef> = vec![];
            for n in &nums {
                let r = IssueRef::local(*n);
                if !expected.contains(&r) { expected.push(r); }
            }
            prop_assert_eq!(parse_blockers(&body), expected);
        }
    }
}
