"""The official `openai` Python SDK against the sidecar's voice gateway.

Usage: python openai_client.py <base-url> <token>
Streams and reassembles text (with the usage chunk), does a non-streaming call, and checks that
an unknown model and `tools` raise openai.BadRequestError and a bad token AuthenticationError.
"""
import sys

import openai

base, token = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0, timeout=30)

models = [m.id for m in client.models.list()]
assert models[:3] == ["sonnet", "opus", "haiku"], models

stream = client.chat.completions.create(
    model="sonnet",
    messages=[
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "tell me about streaming text"},
    ],
    stream=True,
    stream_options={"include_usage": True},
    temperature=0.7,
)
parts, roles, finish, usage = [], [], None, None
for chunk in stream:
    if chunk.usage is not None:
        assert chunk.choices == [], chunk
        usage = chunk.usage
        continue
    choice = chunk.choices[0]
    if choice.delta.role:
        roles.append(choice.delta.role)
    if choice.delta.content:
        parts.append(choice.delta.content)
    if choice.finish_reason:
        finish = choice.finish_reason
text = "".join(parts)
assert text == "You said: Answer briefly.\n\nUser: tell me about streaming text", repr(text)
assert roles == ["assistant"], roles
assert finish == "stop", finish
assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0, usage
print("streamed", len(parts), "chunks:", text.replace("\n", " "))

done = client.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "hi"}])
assert done.choices[0].message.content == "You said: hi", done
assert done.choices[0].finish_reason == "stop"
assert done.usage.total_tokens > 0
print("non-streaming:", done.choices[0].message.content)

try:
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    raise SystemExit("an unknown model must fail")
except openai.BadRequestError as err:
    assert "sonnet" in str(err), err
    assert err.body["param"] == "model", err.body
    print("bad model ->", type(err).__name__)

try:
    client.chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    raise SystemExit("tools must fail")
except openai.BadRequestError as err:
    assert err.body["param"] == "tools", err.body
    print("tools ->", type(err).__name__)

try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    raise SystemExit("a wrong token must fail")
except openai.AuthenticationError:
    print("bad token -> AuthenticationError")

print("OPENAI SDK TEST PASSED")
