//! `docs/configuration.md` is generated from the clap definitions, so it cannot drift from the
//! flags the binary accepts. `UPDATE_DOCS=1 cargo test --test configuration_doc` rewrites it.

use afk_operator::args::Cli;
use clap::CommandFactory;

fn table(cmd: &clap::Command) -> String {
    let mut out = String::from("| flag | environment | default | description |\n| --- | --- | --- | --- |\n");
    for arg in cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_long().is_some())
    {
        let long = arg.get_long().unwrap_or_default();
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| format!("`{}`", v.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(", ");
        let help = arg
            .get_help()
            .map(|h| h.to_string())
            .unwrap_or_default()
            .replace('|', "\\|")
            .replace('\n', " ");
        out.push_str(&format!("| `--{long}` | {env} | {default} | {help} |\n"));
    }
    out
}

fn render() -> String {
    let cli = Cli::command();
    let mut out = String::from(
        "# Configuration\n\nGenerated from the command-line definitions by `tests/configuration_doc.rs`; do not edit by\nhand (`UPDATE_DOCS=1 cargo test --test configuration_doc` rewrites it). Every flag can also be\nset through its environment variable. Secrets are never flags: only paths of files holding them,\nor Kubernetes Secrets named in the AfkConfig.\n\n## Global\n\n",
    );
    out.push_str(&table(&cli));
    for sub in cli.get_subcommands() {
        out.push_str(&format!(
            "\n## `afk-operator {}`\n\n{}\n\n",
            sub.get_name(),
            sub.get_about().map(|a| a.to_string()).unwrap_or_default()
        ));
        let t = table(sub);
        if t.lines().count() > 2 {
            out.push_str(&t);
        } else {
            out.push_str("No options.\n");
        }
    }
    out
}

#[test]
fn configuration_doc_matches_the_flags() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let want = render();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/configuration.md is stale; run UPDATE_DOCS=1 cargo test --test configuration_doc"
    );
}
