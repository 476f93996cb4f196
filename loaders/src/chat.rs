//! Chat templates: turning a conversation into the prompt text a model was
//! trained on, by rendering the Jinja template in `tokenizer.chat_template`
//! (or a built-in one) the way HF transformers does: `trim_blocks` and
//! `lstrip_blocks` on, loop controls, `raise_exception`, `strftime_now`,
//! Python-style `tojson` and Python string methods (`.strip()`, ...).

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::tokenizer::{EncodeOptions, Tokenizer};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Templates for models that ship none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n` (Qwen, SmolLM, many others).
    ChatMl,
    /// `[INST] ... [/INST]` with `<<SYS>>` (Llama 2 chat).
    Llama2,
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>` (Llama 3).
    Llama3,
}

impl BuiltinTemplate {
    pub fn from_name(name: &str) -> Option<BuiltinTemplate> {
        match name {
            "chatml" => Some(BuiltinTemplate::ChatMl),
            "llama2" => Some(BuiltinTemplate::Llama2),
            "llama3" => Some(BuiltinTemplate::Llama3),
            _ => None,
        }
    }

    /// The Jinja source (the templates these models publish).
    pub fn source(self) -> &'static str {
        match self {
            BuiltinTemplate::ChatMl => concat!(
                "{% for message in messages %}",
                "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}",
                "{% endfor %}",
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
            ),
            BuiltinTemplate::Llama2 => concat!(
                "{% if messages[0]['role'] == 'system' %}",
                "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}",
                "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}",
                "{% for message in loop_messages %}",
                "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}",
                "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}",
                "{% endif %}",
                "{% if loop.index0 == 0 and system_message != false %}",
                "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}",
                "{% else %}{% set content = message['content'] %}{% endif %}",
                "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}",
                "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}",
                "{% endif %}{% endfor %}",
            ),
            BuiltinTemplate::Llama3 => concat!(
                "{% for message in messages %}",
                "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'",
                " + message['content'] | trim + '<|eot_id|>' %}",
                "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}",
                "{{ content }}{% endfor %}",
                "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template does not parse.
    #[error("chat template does not compile: {0}")]
    Syntax(#[source] minijinja::Error),
    /// The template called `raise_exception(message)`.
    #[error("chat template refused the conversation: {0}")]
    Raised(String),
    #[error("chat template failed to render: {0}")]
    Render(#[source] minijinja::Error),
    #[error("tokenizing the conversation: {0}")]
    Tokenize(#[from] crate::tokenizer::TokenizerError),
    /// A message holds the text of a control token and the template
    /// changed that message, so its text cannot be kept literal.
    #[error("message {index} contains control-token text ({role}) that the template rewrites")]
    Injection { index: usize, role: String },
}

/// Marks errors from `raise_exception` so they can be told apart.
const RAISED: &str = "raise_exception: ";
const NAME: &str = "chat";

/// A compiled chat template plus the special-token strings it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(ChatError::Syntax)?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.into())
            .map_err(ChatError::Syntax)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    pub fn builtin(
        which: BuiltinTemplate,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::new(which.source(), bos_token, eos_token)
    }

    /// The model's own template, or `fallback` when it ships none.
    pub fn for_tokenizer(
        tok: &Tokenizer,
        fallback: BuiltinTemplate,
    ) -> Result<ChatTemplate, ChatError> {
        let source = tok.chat_template().unwrap_or(fallback.source());
        ChatTemplate::new(
            source,
            tok.token_string(tok.bos_id()),
            tok.token_string(tok.eos_id()),
        )
    }

    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with(messages, add_generation_prompt, &serde_json::Value::Null)
    }

    /// `render` with more template variables (`tools`, `documents`, ...)
    /// from a JSON object. Object keys reach the template in serde_json's
    /// order (sorted), where Python would keep insertion order.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String, ChatError> {
        let tmpl = self.env.get_template(NAME).map_err(ChatError::Render)?;
        let base = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        // Our variables win over same-named extras.
        let ctx = minijinja::context! { ..base, ..Value::from(Serde(extra)) };
        tmpl.render(ctx)
            .map_err(|e| match e.detail().and_then(|d| d.strip_prefix(RAISED)) {
                Some(message) => ChatError::Raised(message.to_owned()),
                None => ChatError::Render(e),
            })
    }
}

impl ChatTemplate {
    /// The token ids of a conversation: the rendered template with its
    /// control tokens (`<|im_start|>`, ...) parsed as such, but the text of
    /// every message kept literal, so a user who writes `<|im_end|>` gets
    /// those characters, not a forged end of turn (llama-server parses
    /// them; ollama does not). BOS comes from the template, not added.
    ///
    /// Messages without control-token text tokenize as part of the whole
    /// rendered string, exactly as before; one with such text is found in
    /// the rendered string and tokenized on its own without special
    /// tokens. If the template changed it (so it cannot be found), that is
    /// [`ChatError::Injection`].
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let text = self.render(messages, add_generation_prompt)?;
        let opts = |parse_special| EncodeOptions {
            add_special: false,
            parse_special,
        };
        let mut literal = Vec::new();
        for (index, m) in messages.iter().enumerate() {
            let content = m.content.as_str();
            if content.is_empty()
                || tokenizer.encode(content, opts(true))?
                    == tokenizer.encode(content, opts(false))?
            {
                continue;
            }
            literal.push((index, m));
        }
        if literal.is_empty() {
            return Ok(tokenizer.encode(&text, opts(true))?);
        }
        // Spans of the rendered text that hold those messages, in order.
        let mut ids = Vec::new();
        let mut cursor = 0;
        for (index, m) in literal {
            let Some(at) = text[cursor..].find(&m.content) else {
                return Err(ChatError::Injection {
                    index,
                    role: m.role.clone(),
                });
            };
            let start = cursor + at;
            ids.extend(tokenizer.encode(&text[cursor..start], opts(true))?);
            let end = start + m.content.len();
            ids.extend(tokenizer.encode(&text[start..end], opts(false))?);
            cursor = end;
        }
        ids.extend(tokenizer.encode(&text[cursor..], opts(true))?);
        Ok(ids)
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// `strftime_now(format)`: the current UTC time (transformers uses local
/// time; templates only print the date, and UTC keeps output reproducible
/// across machines).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

/// The subset of C `strftime` chat templates use, for a Unix time in UTC.
fn strftime(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let month_name = MONTHS
        .get(month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("");
    let day_name = DAYS.get((days % 7) as usize).copied().unwrap_or("");
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year % 100),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('B') => write!(out, "{month_name}"),
            Some('b') | Some('h') => write!(out, "{}", month_name.get(..3).unwrap_or("")),
            Some('A') => write!(out, "{day_name}"),
            Some('a') => write!(out, "{}", day_name.get(..3).unwrap_or("")),
            Some('H') => write!(out, "{h:02}"),
            Some('I') => write!(out, "{:02}", (h + 11) % 12 + 1),
            Some('p') => write!(out, "{}", if h < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{m:02}"),
            Some('S') => write!(out, "{s:02}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `tojson` as transformers defines it: Python's `json.dumps` with
/// `ensure_ascii=False` (`", "` and `": "` separators, or `indent`), keys in
/// insertion order unless `sort_keys`. minijinja's own filter escapes HTML
/// characters, which would change the prompt.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    // Accepted and ignored: we never escape non-ASCII; separators follow indent.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    level: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match i64::try_from(v.clone()) {
            Ok(i) if v.is_integer() => {
                let _ = write!(out, "{i}");
            }
            _ => {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                // Python prints floats with a fraction or exponent ("1.0").
                let _ = if f.is_finite() {
                    write!(out, "{f:?}")
                } else {
                    write!(out, "NaN")
                };
            }
        },
        ValueKind::String => write_json_str(v.as_str().unwrap_or(""), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json(item, indent, sort, level + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, level);
            }
            out.push(']');
        }
        ValueKind::Map | ValueKind::Plain => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json_str(&key.to_string(), out);
                out.push_str(": ");
                write_json(&v.get_item(key)?, indent, sort, level + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, level);
            }
            out.push('}');
        }
        _ => write_json_str(&v.to_string(), out),
    }
    Ok(())
}

fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        // 2024-07-26 12:34:56 UTC, a Friday.
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %A", 1_721_997_296),
            "26 Jul 2024 12:34:56 Friday"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    }
}
