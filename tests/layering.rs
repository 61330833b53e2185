//! Structural guard: `src/policy/` (and `src/crd/`) stay pure. They may not use a network
//! client, the kube client, async, spawned tasks, processes, files or the clock — decisions get
//! `now` passed in. A line with a forbidden token fails this test with its location.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &[
    "reqwest",
    "hyper",
    "axum",
    "kube::Client",
    "kube::Api",
    "kube::api",
    "kube::runtime",
    "kube_runtime",
    "tokio",
    "async fn",
    ".await",
    "std::thread",
    "thread::spawn",
    "spawn(",
    "std::process",
    "std::fs",
    "std::net",
    "SystemTime",
    "Instant::now",
    "Timestamp::now",
    "Utc::now",
    "Zoned::now",
    "chrono",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn violations(dir: &str) -> Vec<String> {
    violations_under(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir))
}

fn violations_under(root: &Path) -> Vec<String> {
    let dir = root.display();
    let mut files = vec![];
    rust_files(root, &mut files);
    assert!(!files.is_empty(), "{dir} has no Rust files");
    let mut found = vec![];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for token in FORBIDDEN {
                if code.contains(token) {
                    found.push(format!(
                        "{}:{}: `{token}` in: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn policy_is_pure() {
    let v = violations("src/policy");
    assert!(
        v.is_empty(),
        "policy must stay free of I/O, async and clocks:\n{}",
        v.join("\n")
    );
}

#[test]
fn crd_is_types_only() {
    let v = violations("src/crd");
    assert!(v.is_empty(), "crd must stay types only:\n{}", v.join("\n"));
}

#[test]
fn the_guard_itself_catches_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("src/policy");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(
        sub.join("ok.rs"),
        "// Timestamp::now() in a comment is fine\nfn f() {}\n",
    )
    .unwrap();
    assert!(violations_under(&sub).is_empty());
    std::fs::write(sub.join("bad.rs"), "fn f() { let _ = jiff::Timestamp::now(); }\n").unwrap();
    let found = violations_under(&sub);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("bad.rs:1"));
}
