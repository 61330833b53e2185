//! The web console in headless Chromium (Debian `chromium` + `playwright-core`, installed by
//! `.ci/run` into `.tools/browser`): load, attach, send, see streamed text, reload and see the
//! replay, survive a network drop, stop a turn, run a power verb with its confirm step — with no
//! duplicate message anywhere. The script is `tests/browser/console.cjs`.
//!
//! Without Chromium or playwright-core the test says so and passes, unless
//! `AFK_REQUIRE_BROWSER=1` (set by `.ci/run`).

mod sidecar_support;

use std::path::{Path, PathBuf};

use sidecar_support::{Sidecar, TOKEN, fake_claude};

const MESSAGES_PER_TURN: &str = "40";

fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let modules = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.tools/browser/node_modules"
    ));
    let chromium =
        PathBuf::from(std::env::var("AFK_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let present = modules.join("playwright-core").exists() && chromium.exists();
    if present {
        return Some((modules, chromium));
    }
    assert!(
        std::env::var("AFK_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "the browser test needs {} and {}",
        modules.display(),
        chromium.display()
    );
    eprintln!("SKIPPED: chromium or playwright-core missing");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_attaches_streams_replays_and_never_duplicates() {
    let Some((modules, chromium)) = browser_tools() else {
        return;
    };
    let shim = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ssh-shim"),
        shim.path().join("ssh"),
    )
    .unwrap();
    let ssh = shim.path().join("ssh").display().to_string();
    let sc = Sidecar::start(
        &fake_claude(),
        &[
            ("CLAUDE_CODE_FAKE_MODE", "chatty"),
            ("CLAUDE_CODE_FAKE_MESSAGES", MESSAGES_PER_TURN),
            ("CLAUDE_CODE_FAKE_INTERVAL_MS", "60"),
        ],
        &["--pve-ssh-target", "pve.lan", "--pve-ssh-program", &ssh],
    )
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.cjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .args([sc.base.as_str(), TOKEN, MESSAGES_PER_TURN])
        .env("NODE_PATH", &modules)
        .env("AFK_CHROMIUM", &chromium)
        .env("AFK_SCREENSHOT", sc.dir.path().join("failure.png"))
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("CONSOLE TEST PASSED"));
}
