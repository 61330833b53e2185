//! A real client: the official `openai` Python SDK (installed by `.ci/run` into
//! `.tools/venv`) streams from the sidecar and reassembles the text, makes a non-streaming
//! call, and gets `BadRequestError` for an unknown model and for `tools`. The script is
//! `tests/python/openai_client.py`; the CLI behind the sidecar is the fake script.
//!
//! Without the SDK the test says so and passes, unless `AFK_REQUIRE_OPENAI_SDK=1` (`.ci/run`).

mod sidecar_support;

use std::path::{Path, PathBuf};

use sidecar_support::{Sidecar, TOKEN, fake_claude};

fn python_with_openai() -> Option<PathBuf> {
    let python = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/venv/bin/python"));
    let ok = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var("AFK_REQUIRE_OPENAI_SDK").as_deref() != Ok("1"),
        "the openai SDK is required in {}",
        python.display()
    );
    eprintln!("SKIPPED: the openai Python SDK is not installed");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_streams_and_gets_proper_errors() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([sc.base.as_str(), TOKEN])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("OPENAI SDK TEST PASSED"));
}
