//! The official `openai` Python client against the server, unchanged.
//! Skipped (with a message) when the package is missing; CI installs it
//! with `python3 -m pip install openai`. `KILN_PYTHON` picks the Python.

use std::process::Command;

use crate::common;

const SCRIPT: &str = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
name = client.models.list().data[0].id
messages = [{"role": "user", "content": "Hi"}]
whole = client.chat.completions.create(model=name, messages=messages, max_tokens=2, temperature=0)
choice = whole.choices[0]
assert choice.finish_reason in ("stop", "length"), whole
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
text, usage = "", None
for chunk in client.chat.completions.create(
    model=name, messages=messages, max_tokens=2, temperature=0,
    stream=True, stream_options={"include_usage": True},
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert text == choice.message.content, (text, choice.message.content)
assert usage.completion_tokens == whole.usage.completion_tokens, usage
completion = client.completions.create(model=name, prompt="The capital of France is", max_tokens=2, temperature=0)
assert completion.choices[0].text, completion
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise SystemExit("an unknown model should be a NotFoundError")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
print("ok", repr(choice.message.content), repr(completion.choices[0].text))
"#;

#[test]
fn openai_python_client_round_trip() {
    let python = std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        eprintln!(
            "openai_python_client_round_trip: skipped: `{python} -c 'import openai'` failed \
             (python3 -m pip install openai)"
        );
        return;
    }
    let Some(server) = common::shared("openai python client") else {
        return;
    };
    let out = Command::new(&python)
        .args(["-c", SCRIPT, &server.base])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("ok "), "{stdout}");
    eprintln!("openai client: {stdout}");
}
