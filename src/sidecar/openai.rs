//! The OpenAI chat-completions wire format, as far as the voice gateway speaks it: request
//! validation (what we accept, what is a clear 400), flattening a dialogue into one CLI prompt,
//! and the response objects and stream chunks. Pure — no I/O, no clock; the handler passes ids
//! and timestamps in — so every rule here is unit-tested.

use serde::Deserialize;
use serde_json::{Value, json};

/// The model aliases always accepted (the CLI resolves them).
pub const MODEL_ALIASES: [&str; 3] = ["sonnet", "opus", "haiku"];

/// A chat-completions request. Unknown fields (sampling knobs, `user`, `seed`, …) are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// Model id or alias.
    pub model: Option<String>,
    /// The dialogue.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as SSE chunks.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Stream options (`include_usage`).
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Function calling is not offered: any value here is a 400.
    #[serde(default)]
    pub tools: Option<Value>,
    /// Legacy function calling: a 400 too.
    #[serde(default)]
    pub functions: Option<Value>,
    /// Number of choices; only 1 is possible.
    #[serde(default)]
    pub n: Option<u64>,
}

/// `stream_options`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final usage chunk.
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of the dialogue.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` (others are rejected).
    pub role: String,
    /// A string, an array of content parts, or null.
    #[serde(default)]
    pub content: Value,
}

/// A request error: the message and the offending parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// What is wrong, for the client.
    pub message: String,
    /// The parameter at fault.
    pub param: Option<&'static str>,
}

fn invalid(message: impl Into<String>, param: &'static str) -> Invalid {
    Invalid {
        message: message.into(),
        param: Some(param),
    }
}

/// What a valid request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatPlan {
    /// The model id as the client sent it (echoed back).
    pub model: String,
    /// The flattened prompt.
    pub prompt: String,
    /// Stream?
    pub stream: bool,
    /// Final usage chunk?
    pub include_usage: bool,
}

/// Whether `model` is served: an alias or one of the configured ids.
pub fn model_supported(model: &str, configured: &[String]) -> bool {
    MODEL_ALIASES.contains(&model) || configured.iter().any(|m| m == model)
}

/// Every model id served, aliases first.
pub fn model_ids(configured: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = MODEL_ALIASES.iter().map(|s| s.to_string()).collect();
    for id in configured {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    ids
}

/// Validate a request and flatten it into a plan.
pub fn plan(request: &ChatRequest, configured_models: &[String]) -> Result<ChatPlan, Invalid> {
    let model = request
        .model
        .as_deref()
        .ok_or_else(|| invalid("you must provide a model parameter", "model"))?;
    if !model_supported(model, configured_models) {
        return Err(invalid(
            format!(
                "the model `{model}` is not served here; supported models: {}",
                model_ids(configured_models).join(", ")
            ),
            "model",
        ));
    }
    if request.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(invalid(
            "tools are not supported: this endpoint runs a conversational agent without tools; remove `tools`",
            "tools",
        ));
    }
    if request.functions.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(invalid(
            "functions are not supported; remove `functions`",
            "functions",
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(invalid("only n = 1 is supported", "n"));
    }
    let prompt = flatten(&request.messages)?;
    Ok(ChatPlan {
        model: model.to_string(),
        prompt,
        stream: request.stream.unwrap_or(false),
        include_usage: request.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// The text of a message's content: a string, text parts, or null (empty).
fn content_text(content: &Value) -> Result<String, Invalid> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = Vec::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push(t.as_str()),
                    (Some(kind), _) if kind != "text" => {
                        return Err(invalid(
                            format!("content parts of type `{kind}` are not supported; send text"),
                            "messages",
                        ));
                    }
                    _ => return Err(invalid("a text content part needs a `text` string", "messages")),
                }
            }
            Ok(text.join("\n"))
        }
        _ => Err(invalid(
            "message content must be a string or an array of text parts",
            "messages",
        )),
    }
}

/// Flatten the dialogue: system/developer messages become the preamble, the rest `User:` /
/// `Assistant:` turns, ending on the latest user turn. A lone user message is sent as is.
pub fn flatten(messages: &[ChatMessage]) -> Result<String, Invalid> {
    let mut preamble = Vec::new();
    let mut turns: Vec<(&str, String)> = Vec::new();
    for message in messages {
        let text = content_text(&message.content)?;
        match message.role.as_str() {
            "system" | "developer" => {
                if !text.trim().is_empty() {
                    preamble.push(text);
                }
            }
            "user" => turns.push(("User", text)),
            "assistant" => turns.push(("Assistant", text)),
            other => {
                return Err(invalid(
                    format!(
                        "messages with role `{other}` are not supported (system, developer, user, assistant)"
                    ),
                    "messages",
                ));
            }
        }
    }
    match turns.last() {
        None => {
            return Err(invalid(
                "messages must contain at least one user message",
                "messages",
            ));
        }
        Some(("User", text)) if text.trim().is_empty() => {
            return Err(invalid("the last user message is empty", "messages"));
        }
        Some(("User", _)) => {}
        Some(_) => return Err(invalid("the last message must come from the user", "messages")),
    }
    if preamble.is_empty() && turns.len() == 1 {
        return Ok(turns.remove(0).1);
    }
    let mut prompt = String::new();
    if !preamble.is_empty() {
        prompt.push_str(&preamble.join("\n\n"));
        prompt.push_str("\n\n");
    }
    let dialogue: Vec<String> = turns.iter().map(|(who, text)| format!("{who}: {text}")).collect();
    prompt.push_str(&dialogue.join("\n\n"));
    Ok(prompt)
}

/// OpenAI's `finish_reason` for the CLI's stop reason.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        _ => "stop",
    }
}

/// Token usage in OpenAI's shape.
pub fn usage_json(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Identity fields shared by every object of one completion.
#[derive(Clone, Debug)]
pub struct CompletionId {
    /// `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// The model as requested.
    pub model: String,
}

impl CompletionId {
    /// A stream chunk with one choice.
    pub fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    /// The first chunk: the role together with the first real text.
    pub fn first_chunk(&self, text: &str) -> Value {
        self.chunk(json!({"role": "assistant", "content": text}), None)
    }

    /// A text delta.
    pub fn text_chunk(&self, text: &str) -> Value {
        self.chunk(json!({"content": text}), None)
    }

    /// The usage chunk (`choices: []`).
    pub fn usage_chunk(&self, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        })
    }

    /// A whole (non-streamed) completion.
    pub fn completion(&self, text: &str, finish_reason: &str, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage,
        })
    }
}

/// One SSE `data:` frame. JSON never contains a raw newline, so one line suffices.
pub fn sse_data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn plan_of(body: Value) -> Result<ChatPlan, Invalid> {
        plan(&request(body), &["claude-sonnet-4-5".to_string()])
    }

    #[test]
    fn a_lone_user_message_is_the_prompt() {
        let p = plan_of(json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(p.prompt, "hi");
        assert!(!p.stream);
        assert!(!p.include_usage);
    }

    #[test]
    fn dialogue_is_flattened_with_preamble_and_turns() {
        let p = plan_of(json!({
            "model": "claude-sonnet-4-5",
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "presence_penalty": 0, "user": "x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Speak English."}]},
                {"role": "user", "content": "What is two plus two?"},
                {"role": "assistant", "content": "Four."},
                {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "times three?"}]},
            ]
        }))
        .unwrap();
        assert_eq!(
            p.prompt,
            "Be brief.\n\nSpeak English.\n\nUser: What is two plus two?\n\nAssistant: Four.\n\nUser: And\ntimes three?"
        );
        assert!(p.stream && p.include_usage);
    }

    #[test]
    fn rejections_name_the_parameter() {
        let cases = [
            (json!({"messages": [{"role": "user", "content": "x"}]}), "model"),
            (
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (
                json!({"model": "sonnet", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "x"}]}),
                "tools",
            ),
            (
                json!({"model": "sonnet", "functions": [{}], "messages": [{"role": "user", "content": "x"}]}),
                "functions",
            ),
            (
                json!({"model": "sonnet", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
                "n",
            ),
            (json!({"model": "sonnet", "messages": []}), "messages"),
            (
                json!({"model": "sonnet", "messages": [{"role": "system", "content": "x"}]}),
                "messages",
            ),
            (
                json!({"model": "sonnet", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
                "messages",
            ),
            (
                json!({"model": "sonnet", "messages": [{"role": "tool", "content": "x"}]}),
                "messages",
            ),
            (
                json!({"model": "sonnet", "messages": [{"role": "user", "content": "  "}]}),
                "messages",
            ),
            (
                json!({"model": "sonnet", "messages": [{"role": "user", "content": 5}]}),
                "messages",
            ),
            (
                json!({"model": "sonnet", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "messages",
            ),
        ];
        for (body, param) in cases {
            let err = plan_of(body.clone()).unwrap_err();
            assert_eq!(err.param, Some(param), "{body}: {}", err.message);
        }
    }

    #[test]
    fn unknown_model_lists_the_supported_ones() {
        let err =
            plan_of(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})).unwrap_err();
        assert!(
            err.message.contains("sonnet, opus, haiku, claude-sonnet-4-5"),
            "{}",
            err.message
        );
    }

    #[test]
    fn null_tools_are_no_tools() {
        assert!(
            plan_of(
                json!({"model": "sonnet", "tools": null, "messages": [{"role": "user", "content": "x"}]})
            )
            .is_ok()
        );
    }

    #[test]
    fn chunks_have_the_openai_shape() {
        let id = CompletionId {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "sonnet".into(),
        };
        let first = id.first_chunk("Hel");
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": "Hel"})
        );
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        let last = id.chunk(json!({}), Some("stop"));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let usage = id.usage_chunk(usage_json(3, 4));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 7);
        let whole = id.completion("hi", "stop", usage_json(1, 1));
        assert_eq!(whole["choices"][0]["message"]["content"], "hi");
        assert_eq!(sse_data(&json!({"a": "x\ny"})), "data: {\"a\":\"x\\ny\"}\n\n");
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(finish_reason(Some("end_turn")), "stop");
        assert_eq!(finish_reason(Some("max_tokens")), "length");
        assert_eq!(finish_reason(None), "stop");
    }

    proptest::proptest! {
        #[test]
        fn flatten_never_panics_and_ends_on_the_user(texts in proptest::collection::vec(("[a-z]{0,3}", "[ -~]{0,20}"), 0..8)) {
            let messages: Vec<ChatMessage> = texts
                .iter()
                .map(|(role, text)| ChatMessage { role: role.clone(), content: Value::String(text.clone()) })
                .collect();
            if let Ok(prompt) = flatten(&messages) {
                let last = messages.iter().rev().find(|m| m.role != "system" && m.role != "developer").unwrap();
                proptest::prop_assert_eq!(&last.role, "user");
                proptest::prop_assert!(prompt.ends_with(last.content.as_str().unwrap()));
            }
        }
    }
}
