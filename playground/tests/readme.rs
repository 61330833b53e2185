//! The README's first-run blocks, executed as written against the playground, so the first
//! contact cannot drift from what the program does: the first block is the command this crate
//! builds, the second is run line by line with the real kubectl (a `-w` watch is given a few
//! seconds, then ended). Skips when kubectl is missing locally; CI (`AFK_REQUIRE_KUBECTL=1`)
//! fails instead.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubectl_dir() -> Option<PathBuf> {
    let local = root().join(".tools/kubectl");
    if local.join("kubectl").is_file() {
        return Some(local);
    }
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(PathBuf::new());
    }
    assert!(
        std::env::var("AFK_REQUIRE_KUBECTL").as_deref() != Ok("1"),
        "AFK_REQUIRE_KUBECTL=1 but no kubectl found"
    );
    eprintln!("skipping: kubectl not found (install it or run .ci/run)");
    None
}

/// The shell blocks of the README's "First run" section.
fn first_run_blocks() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("First run"))
        .expect("README has a First run section");
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| {
            b.split("```")
                .next()
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn the_readme_first_run_blocks_run_as_written() {
    let blocks = first_run_blocks();
    assert_eq!(
        blocks[0],
        vec!["cargo run --release -p afk-playground".to_string()],
        "the first command is this crate's binary"
    );
    let Some(kubectl) = kubectl_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_afk-playground"))
        .args(["--fast", "--console-port", "0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let out = child.stdout.take().unwrap();
    let _child = Kill(child);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    // A reader takes longer than the operator's first reconcile: wait until it has said so.
    let start = Instant::now();
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("Armed=False (Suspended)"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the playground never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let printed = lines.lock().unwrap().join("\n");
    let kubeconfig = dir.path().canonicalize().unwrap().join("kubeconfig");
    assert!(
        printed.contains(&format!("export KUBECONFIG={}", kubeconfig.display())),
        "the playground prints the README's export line:\n{printed}"
    );

    let path = format!(
        "{}:{}",
        kubectl.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut transcript = String::new();
    for line in &blocks[1] {
        let command = line.split('#').next().unwrap().trim();
        if command.is_empty() {
            continue;
        }
        if command.starts_with("export KUBECONFIG=") {
            assert!(command.contains("/tmp/afk-playground-"), "{command}");
            continue;
        }
        let watch = command.ends_with(" -w");
        let script = if watch {
            format!("timeout 5 {command}; test $? -eq 124")
        } else {
            command.to_string()
        };
        let out = Command::new("bash")
            .args(["-c", &script])
            .env("KUBECONFIG", &kubeconfig)
            .env("PATH", &path)
            .current_dir(root())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        transcript.push_str(&format!("$ {command}\n{text}"));
        assert!(
            out.status.success(),
            "README line failed: {command}\n{transcript}"
        );
        if command.starts_with("kubectl describe afkc demo") {
            assert!(
                text.contains("Suspended"),
                "disarmed before the patch:\n{text}\n{}",
                lines.lock().unwrap().join("\n")
            );
        }
        if watch {
            assert!(
                text.contains("demo-shop-1-1"),
                "the runs appear once armed:\n{text}"
            );
        }
    }
}
