//! The agent definitions under `agents/`: Markdown with a YAML front matter (`name`,
//! `description`, optional `tools` and `model`), loaded and validated once at start-up so a
//! broken or missing definition stops the process with a clear error instead of surfacing as a
//! confused agent at 3 a.m.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// The agents the operator needs, by file stem.
pub const REQUIRED: [&str; 3] = ["issue-implementer", "conversational", "breakglass"];

/// `agents/*.md` as built into the binary (used when no `--agents-dir` is given).
const EMBEDDED: [(&str, &str); 3] = [
    ("agents/breakglass.md", include_str!("../agents/breakglass.md")),
    (
        "agents/conversational.md",
        include_str!("../agents/conversational.md"),
    ),
    (
        "agents/issue-implementer.md",
        include_str!("../agents/issue-implementer.md"),
    ),
];

/// The front matter of an agent file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontMatter {
    /// Must equal the file stem.
    pub name: String,
    /// One line saying what the agent is for.
    pub description: String,
    /// Tools the agent may use; `Some([])` means none.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Model override.
    #[serde(default)]
    pub model: Option<String>,
}

/// One loaded agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// The front matter.
    pub meta: FrontMatter,
    /// The instructions (Markdown after the front matter).
    pub body: String,
}

/// Every agent, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Agents {
    by_name: BTreeMap<String, Agent>,
}

/// Why the agents could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid agent definition.
    #[error("invalid agent file {path}: {why}")]
    Invalid {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A required agent is missing.
    #[error("agent {0:?} is missing from the agents directory")]
    Missing(&'static str),
}

/// Parse one agent file's text.
pub fn parse(path: &Path, text: &str) -> Result<Agent, AgentError> {
    let invalid = |why: String| AgentError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
        .ok_or_else(|| invalid("it must start with a `---` front matter block".into()))?;
    let end = rest
        .find("\n---")
        .ok_or_else(|| invalid("the front matter is not closed by `---`".into()))?;
    let (yaml, after) = rest.split_at(end);
    let body = after["\n---".len()..]
        .trim_start_matches(['\r', '\n'])
        .to_string();
    let meta: FrontMatter = serde_yaml::from_str(yaml).map_err(|e| invalid(format!("front matter: {e}")))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if meta.name != stem {
        return Err(invalid(format!(
            "name {:?} does not match the file name {stem:?}",
            meta.name
        )));
    }
    if meta.description.trim().is_empty() {
        return Err(invalid("description is empty".into()));
    }
    if body.trim().is_empty() {
        return Err(invalid(
            "the instructions after the front matter are empty".into(),
        ));
    }
    if meta.name == "conversational" && meta.tools.as_ref().is_none_or(|t| !t.is_empty()) {
        return Err(invalid(
            "the conversational agent must declare `tools: []`".into(),
        ));
    }
    Ok(Agent { meta, body })
}

impl Agents {
    /// Load every `*.md` in `dir` and check the required agents are there.
    pub fn load_dir(dir: &Path) -> Result<Self, AgentError> {
        let read_err = |path: &Path, source| AgentError::Read {
            path: path.to_path_buf(),
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| read_err(dir, e))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        paths.sort();
        let mut files = vec![];
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
            files.push((path, text));
        }
        Self::from_files(files)
    }

    /// The definitions of the repo's `agents/`, compiled into the binary: the default, so the
    /// binary runs from any directory.
    pub fn embedded() -> Result<Self, AgentError> {
        Self::from_files(
            EMBEDDED
                .iter()
                .map(|(path, text)| (PathBuf::from(path), (*text).to_string()))
                .collect(),
        )
    }

    fn from_files(files: Vec<(PathBuf, String)>) -> Result<Self, AgentError> {
        let mut by_name = BTreeMap::new();
        for (path, text) in files {
            let agent = parse(&path, &text)?;
            by_name.insert(agent.meta.name.clone(), agent);
        }
        for name in REQUIRED {
            if !by_name.contains_key(name) {
                return Err(AgentError::Missing(name));
            }
        }
        Ok(Self { by_name })
    }

    /// An agent by name.
    pub fn get(&self, name: &str) -> Option<&Agent> {
        self.by_name.get(name)
    }

    /// The issue-implementer preamble.
    pub fn issue_implementer(&self) -> Option<&Agent> {
        self.get("issue-implementer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> PathBuf {
        PathBuf::from(format!("agents/{name}.md"))
    }

    #[test]
    fn the_shipped_agents_load() {
        let agents = Agents::load_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("agents")).unwrap();
        for name in REQUIRED {
            assert!(agents.get(name).is_some(), "{name}");
        }
        let implementer = agents.issue_implementer().unwrap();
        for must in [
            "worktree",
            "Closes #",
            "AFK-Run:",
            "force-push",
            "[ci skip]",
            "PersistentVolume",
            "stop",
        ] {
            assert!(
                implementer.body.contains(must),
                "issue-implementer must mention {must:?}"
            );
        }
        assert_eq!(agents.get("conversational").unwrap().meta.tools, Some(vec![]));
        assert!(agents.get("breakglass").unwrap().body.contains("forensics"));
    }

    #[test]
    fn the_embedded_agents_are_the_shipped_files() {
        let dir = Agents::load_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("agents")).unwrap();
        let embedded = Agents::embedded().unwrap();
        let names = |a: &Agents| a.by_name.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&dir),
            names(&embedded),
            "a new agents/*.md must be added to EMBEDDED"
        );
        for name in REQUIRED {
            assert_eq!(dir.get(name).unwrap().body, embedded.get(name).unwrap().body);
        }
    }

    #[test]
    fn a_valid_file_parses() {
        let a = parse(
            &p("x"),
            "---\nname: x\ndescription: d\nmodel: haiku\n---\n\nBody.\n",
        )
        .unwrap();
        assert_eq!(a.meta.model.as_deref(), Some("haiku"));
        assert_eq!(a.body, "Body.\n");
    }

    #[test]
    fn invalid_files_are_rejected_with_a_reason() {
        let cases = [
            ("x", "no front matter", "must start with"),
            ("x", "---\nname: x\ndescription: d\n", "not closed"),
            ("x", "---\nname: y\ndescription: d\n---\nBody", "does not match"),
            (
                "x",
                "---\nname: x\ndescription: ''\n---\nBody",
                "description is empty",
            ),
            ("x", "---\nname: x\ndescription: d\n---\n\n", "instructions"),
            (
                "x",
                "---\nname: x\ndescription: d\ncolour: red\n---\nBody",
                "unknown field",
            ),
            ("x", "---\nname: [\n---\nBody", "front matter"),
            (
                "conversational",
                "---\nname: conversational\ndescription: d\n---\nBody",
                "tools: []",
            ),
            (
                "conversational",
                "---\nname: conversational\ndescription: d\ntools: [Bash]\n---\nBody",
                "tools: []",
            ),
        ];
        for (name, text, why) in cases {
            let err = parse(&p(name), text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn missing_required_agents_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("breakglass.md"),
            "---\nname: breakglass\ndescription: d\n---\nB",
        )
        .unwrap();
        let err = Agents::load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("conversational") || err.contains("issue-implementer"),
            "{err}"
        );
        assert!(Agents::load_dir(&dir.path().join("nope")).is_err());
    }
}
