//! The `claude -p --output-format stream-json --verbose --include-partial-messages` event stream,
//! folded into the few events the sidecar acts on (contract: `shared/contracts/claude-cli.md`).
//! Pure: one line in, zero or one event out. The CLI's union has 40+ members; everything not
//! listed here (status, hooks, retries, rate-limit notices, thinking) is dropped, and a line that
//! is not JSON is dropped too — external output never panics the sidecar.

use serde::Deserialize;
use serde_json::Value;

/// A tool call the agent made.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolUse {
    /// Tool name, e.g. `Bash`.
    pub name: String,
    /// The tool's input object.
    pub input: Value,
}

/// Token counts of a turn, as the CLI reports them in its `result` event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
}

impl Usage {
    /// All input tokens, cached or not (what OpenAI calls `prompt_tokens`).
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
    }
}

/// The CLI's final `result` event.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct TurnResult {
    /// `success`, `error_max_budget_usd`, `error_during_execution`, `error_max_turns`, …
    #[serde(default)]
    pub subtype: String,
    /// The error flag; it wins over `subtype` (an API error reports `subtype: success`).
    #[serde(default)]
    pub is_error: bool,
    /// The reply text; absent for budget errors.
    #[serde(default)]
    pub result: Option<String>,
    /// Wall time of the turn inside the CLI.
    #[serde(default)]
    pub duration_ms: u64,
    /// The CLI session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Cost at list price, computed by the CLI from usage.
    #[serde(default)]
    pub total_cost_usd: f64,
    /// Token counts.
    #[serde(default)]
    pub usage: Usage,
    /// Error texts (budget, unknown session, …).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Upstream HTTP status for API errors.
    #[serde(default)]
    pub api_error_status: Option<u16>,
    /// `completed`, `api_error`, `budget_exhausted`, …
    #[serde(default)]
    pub terminal_reason: Option<String>,
    /// The model's stop reason (`end_turn`, `max_tokens`, …).
    #[serde(default)]
    pub stop_reason: Option<String>,
}

/// Why a turn failed, in the sidecar's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The model API answered with an error (status in the result).
    Api,
    /// The per-turn budget ran out.
    Budget,
    /// `--resume` named a session the CLI does not know.
    UnknownSession,
    /// Any other error result.
    Execution,
}

impl TurnResult {
    /// `None` when the turn succeeded.
    pub fn failure(&self) -> Option<Failure> {
        if !self.is_error && !self.subtype.starts_with("error") {
            return None;
        }
        if self.subtype == "error_max_budget_usd"
            || self.terminal_reason.as_deref() == Some("budget_exhausted")
        {
            return Some(Failure::Budget);
        }
        if self.terminal_reason.as_deref() == Some("api_error") || self.api_error_status.is_some() {
            return Some(Failure::Api);
        }
        if self.errors.iter().any(|e| e.starts_with("No conversation found")) {
            return Some(Failure::UnknownSession);
        }
        Some(Failure::Execution)
    }

    /// A one-line description of the failure, safe to show a client (no paths, no stderr).
    pub fn error_message(&self) -> String {
        match self.failure() {
            Some(Failure::Budget) => "the turn exceeded its cost budget".to_string(),
            Some(Failure::Api) => match self.api_error_status {
                Some(status) => format!("the model API answered {status}"),
                None => "the model API failed".to_string(),
            },
            Some(Failure::UnknownSession) => "the session is not known to the CLI".to_string(),
            Some(Failure::Execution) => format!("the CLI reported {}", self.subtype),
            None => String::new(),
        }
    }
}

/// What the sidecar acts on.
#[derive(Clone, Debug, PartialEq)]
pub enum CliEvent {
    /// `system/init`: the session and model.
    Init {
        /// CLI session id.
        session_id: String,
        /// Resolved model id.
        model: String,
    },
    /// A streamed text fragment (`stream_event` → `content_block_delta` → `text_delta`).
    TextDelta(String),
    /// A whole assistant message: its text blocks, tool calls and an error marker, if any.
    Assistant {
        /// Text blocks in order.
        texts: Vec<String>,
        /// Tool calls in order.
        tools: Vec<ToolUse>,
        /// Set on synthetic error messages (`"error": "server_error"`).
        error: Option<String>,
    },
    /// The final result.
    Result(Box<TurnResult>),
}

/// One user message as a line of stream-json input (`--input-format stream-json`), the shape the
/// real CLI accepts (`tests/fixtures/claude-cli/stream-json-input/`): anything else ends it.
pub fn user_message_line(text: &str) -> String {
    let mut line = serde_json::json!({
        "type": "user",
        "message": {"role": "user", "content": text},
    })
    .to_string();
    line.push('\n');
    line
}

/// Parse one line of stream-json; `None` for noise, unknown types and malformed lines.
pub fn parse_line(line: &str) -> Option<CliEvent> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    let kind = value.get("type")?.as_str()?;
    match kind {
        "system" if value.get("subtype").and_then(Value::as_str) == Some("init") => Some(CliEvent::Init {
            session_id: str_field(&value, "session_id"),
            model: str_field(&value, "model"),
        }),
        "stream_event" => {
            let event = value.get("event")?;
            if event.get("type")?.as_str()? != "content_block_delta" {
                return None;
            }
            let delta = event.get("delta")?;
            if delta.get("type")?.as_str()? != "text_delta" {
                return None;
            }
            let text = delta.get("text")?.as_str()?;
            (!text.is_empty()).then(|| CliEvent::TextDelta(text.to_string()))
        }
        "assistant" => {
            let message = value.get("message")?;
            let mut texts = Vec::new();
            let mut tools = Vec::new();
            for block in message
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str) {
                            texts.push(text.to_string());
                        }
                    }
                    Some("tool_use") => tools.push(ToolUse {
                        name: str_field(block, "name"),
                        input: block.get("input").cloned().unwrap_or(Value::Null),
                    }),
                    // thinking, redacted_thinking, server tool blocks: noise for our clients.
                    _ => {}
                }
            }
            let error = value.get("error").and_then(Value::as_str).map(str::to_string);
            Some(CliEvent::Assistant { texts, tools, error })
        }
        "result" => serde_json::from_value::<TurnResult>(value)
            .ok()
            .map(|r| CliEvent::Result(Box::new(r))),
        _ => None,
    }
}

fn str_field(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/claude-cli");

    fn sample(name: &str) -> Vec<CliEvent> {
        let text = std::fs::read_to_string(format!("{SAMPLES}/{name}")).unwrap();
        text.lines().filter_map(parse_line).collect()
    }

    #[test]
    fn user_message_lines_have_the_shape_the_cli_accepts() {
        for text in ["hello", "two\nlines \"quoted\" ünïcode 🙂", ""] {
            let line = user_message_line(text);
            assert!(
                line.ends_with('\n') && !line[..line.len() - 1].contains('\n'),
                "one line"
            );
            let value: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(value["type"], "user");
            assert_eq!(
                value["message"]["role"], "user",
                "the CLI exits on any other role"
            );
            assert_eq!(value["message"]["content"], text);
        }
    }

    #[test]
    fn one_process_two_messages_sample_is_two_whole_turns() {
        // Captured from the real CLI with --input-format stream-json (docs/claude-cli-stream-input.md).
        let events = sample("stream-json-input/two-turns-one-process.jsonl");
        let kinds: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                CliEvent::Init { .. } => Some("init"),
                CliEvent::Result(result) => {
                    assert_eq!(result.failure(), None);
                    Some("result")
                }
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["init", "result", "init", "result"], "a new init per turn");
        let mid_session_error = sample("stream-json-input/api-error-mid-session.jsonl");
        let failures: Vec<_> = mid_session_error
            .iter()
            .filter_map(|e| match e {
                CliEvent::Result(result) => Some(result.failure()),
                _ => None,
            })
            .collect();
        assert_eq!(
            failures,
            [Some(Failure::Api), Some(Failure::Api)],
            "the process stays after an error"
        );
    }

    #[test]
    fn partial_text_sample_yields_init_deltas_message_and_result() {
        let events = sample("claude-2.1.330-stream-json-partial-text.jsonl");
        assert!(matches!(events.first(), Some(CliEvent::Init { session_id, .. }) if !session_id.is_empty()));
        let deltas: String = events
            .iter()
            .filter_map(|e| match e {
                CliEvent::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        let CliEvent::Result(result) = events.last().unwrap() else {
            panic!("last event is the result")
        };
        assert_eq!(result.failure(), None);
        assert_eq!(Some(deltas.as_str()), result.result.as_deref());
        assert!(result.usage.output_tokens > 0);
        let whole: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                CliEvent::Assistant { texts, .. } => Some(texts.concat()),
                _ => None,
            })
            .collect();
        assert_eq!(whole, vec![deltas]);
    }

    #[test]
    fn tool_use_sample_yields_tool_calls() {
        let events = sample("claude-2.1.330-stream-json-tool-use.jsonl");
        let tools: Vec<_> = events
            .iter()
            .flat_map(|e| match e {
                CliEvent::Assistant { tools, .. } => tools.clone(),
                _ => vec![],
            })
            .collect();
        assert_eq!(tools[0].name, "Bash");
        assert_eq!(tools[0].input["command"], "echo hi-from-tool");
    }

    #[test]
    fn api_error_is_an_error_although_subtype_says_success() {
        let events = sample("claude-2.1.330-stream-json-api-error-529.jsonl");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, CliEvent::Assistant { error: Some(_), .. }))
        );
        let CliEvent::Result(result) = events.last().unwrap() else {
            panic!("last event is the result")
        };
        assert_eq!(result.subtype, "success");
        assert_eq!(result.failure(), Some(Failure::Api));
        assert_eq!(result.error_message(), "the model API answered 529");
    }

    #[test]
    fn budget_result_has_no_result_key_and_is_a_budget_failure() {
        let text = std::fs::read_to_string(format!(
            "{SAMPLES}/claude-2.1.330-output-json-budget-exceeded.json"
        ))
        .unwrap();
        let event = parse_line(&text).unwrap();
        let CliEvent::Result(result) = event else {
            panic!("a result")
        };
        assert_eq!(result.result, None);
        assert_eq!(result.failure(), Some(Failure::Budget));
    }

    #[test]
    fn unknown_session_is_recognised() {
        let line = r#"{"type":"result","subtype":"error_during_execution","is_error":true,"errors":["No conversation found with session ID: 99999999-2222-4333-8444-555555555555"]}"#;
        let Some(CliEvent::Result(result)) = parse_line(line) else {
            panic!("a result")
        };
        assert_eq!(result.failure(), Some(Failure::UnknownSession));
    }

    #[test]
    fn noise_and_garbage_are_dropped() {
        for line in [
            "",
            "not json",
            "[1,2]",
            r#"{"type":"system","subtype":"status","status":"requesting"}"#,
            r#"{"type":"system","subtype":"api_retry","attempt":1}"#,
            r#"{"type":"rate_limit_event"}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"thinking_delta","thinking":"hm"}}}"#,
            r#"{"type":"stream_event","event":{"type":"message_stop"}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":""}}}"#,
            r#"{"type":42}"#,
        ] {
            assert_eq!(parse_line(line), None, "{line}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_lines_never_panic(line in ".{0,200}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn text_deltas_round_trip(text in ".{1,100}") {
            let line = serde_json::json!({"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":text}}}).to_string();
            proptest::prop_assert_eq!(parse_line(&line), Some(CliEvent::TextDelta(text)));
        }
    }
}
