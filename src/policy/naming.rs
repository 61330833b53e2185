//! Deterministic names and ids. An AfkRun's name is `<owner>-<name>-<issue>-<attempt>` so a
//! retried create is idempotent; ids sent to T3 are derived from the run's uid and purpose so a
//! re-sent command reuses the same id and T3 answers it from its receipt.

use sha2::{Digest, Sha256};

/// Longest AfkRun name. Names are also used as label values, which Kubernetes caps at 63.
pub const MAX_RUN_NAME: usize = 63;

/// Lower-case, DNS-safe form: alphanumerics kept, everything else a single `-`.
fn dns_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..4])
}

/// The AfkRun name for an attempt at an issue: `<owner>-<name>-<issue>-<attempt>`. When the repo
/// spelling is not already DNS-safe (dots, underscores, runs of hyphens) or the name would pass
/// 63 characters, the prefix is shortened and an 8-hex hash of the exact repo is appended, so two
/// repos never map to one name through sanitising.
pub fn run_name(repo: &str, issue: u64, attempt: u32) -> String {
    let lowered = repo.to_ascii_lowercase();
    let safe_repo = dns_safe(&lowered);
    let suffix = format!("-{issue}-{attempt}");
    let lossless = lowered.replace('/', "-") == safe_repo;
    let plain = format!("{safe_repo}{suffix}");
    if lossless && plain.len() <= MAX_RUN_NAME {
        return plain;
    }
    let hash = short_hash(&[&lowered]);
    let budget = MAX_RUN_NAME - suffix.len() - hash.len() - 1;
    let prefix: String = safe_repo.chars().take(budget).collect();
    let prefix = prefix.trim_end_matches('-');
    let prefix = if prefix.is_empty() { "run" } else { prefix };
    format!("{prefix}-{hash}{suffix}")
}

/// A label value for the repo (`owner.name`; label values cannot hold `/`), hashed when long.
pub fn repo_label_value(repo: &str) -> String {
    let value = repo.replace('/', ".");
    if value.len() <= 63 {
        value
    } else {
        let hash = short_hash(&[repo]);
        format!("{}-{hash}", &value[..54].trim_end_matches(['-', '.', '_']))
    }
}

/// A UUID-shaped id (RFC 9562 version 8, "custom") derived from the parts, stable across
/// processes. T3 accepts any non-empty string but recommends UUIDs.
pub fn derived_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"afk.dev/id\0");
    for p in parts {
        hasher.update(p.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // RFC variant
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The deterministic T3 project id for a workspace root; `generation` moves past ids that were
/// soft-deleted (T3 never reuses an id).
pub fn project_id(workspace_root: &str, generation: u32) -> String {
    derived_id(&["project", workspace_root, &generation.to_string()])
}

/// The executor's workspace root for a repo: `<base>/<owner>__<name>`.
pub fn workspace_root(base: &str, repo: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), repo.replacen('/', "__", 1))
}

/// SHA-256 (lower-case hex) of the task snapshot: `title + "\n" + body`.
pub fn snapshot_sha256(title: &str, body: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(title.as_bytes());
    hasher.update(b"\n");
    hasher.update(body.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_follow_the_spec() {
        assert_eq!(run_name("acme/app", 42, 1), "acme-app-42-1");
        assert_eq!(
            run_name("Acme/App", 42, 2),
            "acme-app-42-2",
            "GitHub names are case-insensitive"
        );
    }

    #[test]
    fn lossy_or_long_names_get_a_hash() {
        let dotted = run_name("acme/app.js", 1, 1);
        let dashed = run_name("acme/app-js", 1, 1);
        assert_eq!(dashed, "acme-app-js-1-1");
        assert_ne!(dotted, dashed, "sanitising must not merge repos");
        assert!(dotted.ends_with("-1-1"));
        let long = run_name(&format!("acme/{}", "x".repeat(100)), 123456, 7);
        assert!(long.len() <= MAX_RUN_NAME, "{long}");
        assert!(long.ends_with("-123456-7"));
    }

    #[test]
    fn derived_ids_are_stable_uuids() {
        let a = derived_id(&["uid-1", "thread"]);
        assert_eq!(a, derived_id(&["uid-1", "thread"]));
        assert_ne!(a, derived_id(&["uid-1", "turn"]));
        assert_ne!(
            derived_id(&["ab", "c"]),
            derived_id(&["a", "bc"]),
            "parts are delimited"
        );
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }

    #[test]
    fn workspace_and_snapshot() {
        assert_eq!(workspace_root("/data/", "acme/app"), "/data/acme__app");
        assert_eq!(
            snapshot_sha256("Retry webhook deliveries with backoff", "b"),
            snapshot_sha256("Retry webhook deliveries with backoff", "b")
        );
        assert_eq!(
            snapshot_sha256(
                "Retry webhook deliveries with backoff",
                "Deliveries that fail with a 5xx are dropped today. Retry them with exponential\nbackoff (3 tries, 1s/4s/16s) and record the final failure.\n\nBlocked by #40\n"
            ),
            "925b26c1d59404a3721a9ba4a8d16409db284d5c7127f1b13062544821fa294c",
            "matches docs/examples/afkrun.yaml"
        );
    }

    proptest! {
        #[test]
        fn names_are_valid_dns_labels(owner in "[A-Za-z0-9][A-Za-z0-9-]{0,38}", name in "[A-Za-z0-9._-]{1,100}", issue in 1u64..10_000_000, attempt in 1u32..1000) {
            let n = run_name(&format!("{owner}/{name}"), issue, attempt);
            prop_assert!(n.len() <= MAX_RUN_NAME);
            prop_assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{}", n);
            prop_assert!(!n.starts_with('-') && !n.ends_with('-'));
            let suffix = format!("-{issue}-{attempt}");
            prop_assert!(n.ends_with(&suffix));
        }
    }
}
