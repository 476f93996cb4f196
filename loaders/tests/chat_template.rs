//! Chat templates rendered with minijinja the way transformers renders them
//! with jinja2; expected strings were produced once by Python jinja2
//! (`trim_blocks`, `lstrip_blocks`, loop controls, transformers' `tojson`).

use kiln_loaders::{BuiltinTemplate, ChatError, ChatTemplate, Message};

fn convo() -> Vec<Message> {
    vec![
        Message::new("system", "Be brief."),
        Message::new("user", " Hi! "),
        Message::new("assistant", "Hello."),
    ]
}

#[test]
fn builtin_llama2() {
    let t = ChatTemplate::builtin(BuiltinTemplate::Llama2, "<s>", "</s>").expect("compile");
    assert_eq!(
        t.render(&convo(), true).expect("render"),
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi! [/INST] Hello. </s>"
    );
    // Roles out of order: the template raises, we get its message.
    let bad = [Message::new("assistant", "x")];
    match t.render(&bad, false) {
        Err(ChatError::Raised(msg)) => assert!(msg.contains("alternate"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn builtin_llama3() {
    let t = ChatTemplate::builtin(BuiltinTemplate::Llama3, "<|begin_of_text|>", "<|eot_id|>")
        .expect("compile");
    assert_eq!(
        t.render(&convo(), true).expect("render"),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn builtin_chatml() {
    let t = ChatTemplate::builtin(BuiltinTemplate::ChatMl, "", "<|im_end|>").expect("compile");
    assert_eq!(
        t.render(&[Message::new("user", "Hi")], true)
            .expect("render"),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        BuiltinTemplate::from_name("chatml"),
        Some(BuiltinTemplate::ChatMl)
    );
    assert_eq!(BuiltinTemplate::from_name("vicuna"), None);
}

#[test]
fn python_methods_loop_controls_and_tojson() {
    let src = "{% for m in messages %}\n  {% if m.role == 'stop' %}{% break %}{% endif %}\n  \
               {{ m.content.strip().upper() }}{% if m.content.startswith(' ') %}!{% endif %}\n\
               {% endfor %}\n{{ tools | tojson }}|{{ tools | tojson(indent=2) }}";
    let t = ChatTemplate::new(src, "", "").expect("compile");
    let msgs = [
        Message::new("user", " x "),
        Message::new("stop", ""),
        Message::new("user", "y"),
    ];
    let tools = serde_json::json!({"tools": [{"name": "f", "params": {"a": [1.5, true, null, "ü\"<"], "b": 1}}]});
    assert_eq!(
        t.render_with(&msgs, false, &tools).expect("render"),
        "  X![{\"name\": \"f\", \"params\": {\"a\": [1.5, true, null, \"ü\\\"<\"], \"b\": 1}}]|[\n  {\n    \
         \"name\": \"f\",\n    \"params\": {\n      \"a\": [\n        1.5,\n        true,\n        null,\n        \
         \"ü\\\"<\"\n      ],\n      \"b\": 1\n    }\n  }\n]"
    );
}

#[test]
fn strftime_now_gives_a_date() {
    let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", "", "").expect("compile");
    let out = t.render(&[], false).expect("render");
    assert_eq!(out.len(), 10, "{out}");
    assert!(out.starts_with("20"), "{out}");
}

#[test]
fn broken_templates_are_typed_errors() {
    assert!(matches!(
        ChatTemplate::new("{% for m in messages %}", "", ""),
        Err(ChatError::Syntax(_))
    ));
    assert!(matches!(
        ChatTemplate::new("{{ 1 + }}", "", ""),
        Err(ChatError::Syntax(_))
    ));
    let t = ChatTemplate::new("{{ messages[0].content.nosuchmethod() }}", "", "").expect("compile");
    assert!(matches!(
        t.render(&[Message::new("user", "x")], false),
        Err(ChatError::Render(_))
    ));
    let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").expect("compile");
    assert!(matches!(t.render(&[], false), Err(ChatError::Raised(m)) if m == "no system role"));
}
