//! Run the fake API server on a loopback port and print the path of a kubeconfig for it.
//!
//! `cargo run -p afk-testkit --bin fake-apiserver -- --port 0 --crds crds/`
//! then `kubectl --kubeconfig <printed path> get afkruns`. Runs until Ctrl-C.

use std::path::PathBuf;

use afk_testkit::apiserver::{FakeApiServer, kubeconfig_text};

#[tokio::main]
async fn main() {
    let mut port: u16 = 0;
    let mut crds: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage("--port takes a number"))
            }
            "--crds" => {
                crds = Some(
                    args.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage("--crds takes a directory")),
                )
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let mut server = FakeApiServer::new();
    if let Some(dir) = crds {
        server = server
            .with_crd_dir(&dir)
            .unwrap_or_else(|e| usage(&format!("cannot read CRDs from {}: {e}", dir.display())));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| usage(&format!("cannot bind: {e}")));
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let path = std::env::temp_dir().join(format!("fake-apiserver-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, kubeconfig_text(&url)).expect("write kubeconfig");
    println!("{}", path.display());
    eprintln!("fake API server at {url}; Ctrl-C to stop");
    let router = server.router();
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    let _ = std::fs::remove_file(path);
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("fake-apiserver: {problem}");
    }
    eprintln!("usage: fake-apiserver [--port N] [--crds DIR]");
    std::process::exit(2)
}
