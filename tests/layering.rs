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

/// The allowed-import matrix of `docs/architecture.md`: which top-level modules each module
/// may name through `crate::`. `cli` (and `main.rs`) wire everything and are not listed.
const ALLOWED: &[(&str, &[&str])] = &[
    ("crd", &[]),
    ("policy", &["crd"]),
    ("adapters", &["crd", "agents"]),
    ("agents", &[]),
    ("metrics", &[]),
    ("args", &[]),
    ("telemetry", &["args"]),
    ("controller", &["crd", "policy", "adapters", "agents", "metrics"]),
    (
        "sidecar",
        &[
            "crd",
            "policy",
            "adapters",
            "controller",
            "agents",
            "metrics",
            "args",
        ],
    ),
];

/// What the sidecar may name of the controllers: the trigger channel's message only.
const SIDECAR_FROM_CONTROLLER: &[&str] = &["Trigger"];

/// Every path a use tree names, split into segments (`a::{b, c::d}` → `[a, b]`, `[a, c, d]`).
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
        return;
    }
    if tree.is_empty() {
        return;
    }
    let (head, rest) = match tree.find("::") {
        Some(i) if !tree[..i].contains('{') => (&tree[..i], &tree[i + 2..]),
        _ => (tree, ""),
    };
    let head = head.split_whitespace().next().unwrap_or_default().to_string();
    let mut path = prefix.to_vec();
    path.push(head);
    if rest.is_empty() {
        out.push(path);
    } else {
        expand(rest, &path, out);
    }
}

/// Every `crate::…` path in `text` (use statements, groups and inline paths), comments aside.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            // A trailing comment (`// …`; `http://` has no space after the slashes).
            false => l.split("// ").next().unwrap_or_default(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = vec![];
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            let in_tree = c.is_alphanumeric() || c == '_' || c == ':';
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' => depth -= 1,
                ';' => {
                    end = i;
                    break;
                }
                _ if depth == 0 && !in_tree => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        expand(&after[..end], &[], &mut out);
        rest = &after[end..];
    }
    out
}

fn import_violations(root: &Path) -> Vec<String> {
    let mut found = vec![];
    for (module, allowed) in ALLOWED {
        let dir = root.join(module);
        let mut files = vec![];
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = root.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        assert!(!files.is_empty(), "src/{module} has no Rust files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for path in crate_paths(&text) {
                let target = path[0].as_str();
                if target == *module || target == "self" || target.is_empty() {
                    continue;
                }
                let item = path.get(1).map(String::as_str).unwrap_or_default();
                let ok = allowed.contains(&target)
                    && (*module != "sidecar"
                        || target != "controller"
                        || SIDECAR_FROM_CONTROLLER.contains(&item));
                if !ok {
                    found.push(format!(
                        "{}: {module} may not use crate::{}",
                        file.display(),
                        path.join("::")
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn modules_import_only_what_the_architecture_allows() {
    let v = import_violations(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        v.is_empty(),
        "imports outside docs/architecture.md's matrix:\n{}",
        v.join("\n")
    );
}

#[test]
fn the_import_matrix_reads_use_trees_and_inline_paths() {
    let text = "use crate::{\n    adapters::{t3::Command, AdapterError},\n    crd::Phase, // crate::sidecar in a comment\n};\nfn f() { crate::policy::naming::derived_id(&[]); }\n";
    let paths: Vec<String> = crate_paths(text).into_iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "adapters::t3::Command",
            "adapters::AdapterError",
            "crd::Phase",
            "policy::naming::derived_id"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    for (module, _) in ALLOWED {
        std::fs::create_dir_all(dir.path().join(module)).unwrap();
        std::fs::write(dir.path().join(module).join("mod.rs"), "").unwrap();
    }
    std::fs::write(
        dir.path().join("policy/bad.rs"),
        "use crate::controller::Context;\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sidecar/bad.rs"),
        "use crate::{controller::{Trigger, Context}};\n",
    )
    .unwrap();
    let found = import_violations(dir.path());
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("policy may not use crate::controller::Context"));
    assert!(found[1].contains("sidecar may not use crate::controller::Context"));
}
