//! Which ids are BOS, EOS, end-of-turn and end-of-generation, following
//! llama.cpp's `llama_vocab::impl::load`: ids from `tokenizer.ggml.*_token_id`
//! over per-model defaults, then the token texts that llama.cpp recognises
//! by name (GGUF files often lack the keys), which also turns those tokens
//! into CONTROL tokens.

use std::collections::BTreeSet;

use super::vocab::{attr, Vocab};
use super::TokenizerError;
use crate::Metadata;

/// The special tokens of a model. Ids are `None` where the model has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End of turn (`<|im_end|>`, `<|eot_id|>`, ...).
    pub eot: Option<u32>,
    /// End of message (`<|eom_id|>`, Llama 3.1 tool calls).
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    /// Whether `encode` with `add_special` puts BOS first / EOS last.
    pub add_bos: bool,
    pub add_eos: bool,
    /// Every id that ends generation: EOS, EOT, EOM and llama.cpp's
    /// name-based extras (`<|endoftext|>`, `<reponame>`, ...).
    pub eog: BTreeSet<u32>,
}

/// What the tokenizer model implies before the metadata has its say.
pub(crate) struct Defaults {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
}

// Token texts llama.cpp takes for these roles when the key is absent.
const EOT_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_NAMES: &[&str] = &["<|eom_id|>"];
const FIM_PRE_NAMES: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_NAMES: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_NAMES: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_NAMES: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_NAMES: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_NAMES: &[&str] = &["<|file_sep|>"];
/// Tokens that end generation whatever the metadata says.
pub(crate) const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss: rendered as text, never treated as control.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

pub(crate) fn resolve(
    meta: &Metadata,
    vocab: &mut Vocab,
    defaults: Defaults,
) -> Result<SpecialTokens, TokenizerError> {
    let n = vocab.len();
    let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
    let key = |k: &'static str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
        match meta.get(k) {
            None => Ok(in_range(default)),
            Some(v) => {
                let id = v.as_u64().ok_or_else(|| TokenizerError::BadKey {
                    key: k,
                    detail: format!("expected a token id, got {v:?}"),
                })?;
                // llama.cpp keeps the default when the key is out of range.
                Ok(match u32::try_from(id).ok().filter(|&i| (i as usize) < n) {
                    Some(i) => Some(i),
                    None => in_range(default),
                })
            }
        }
    };
    let mut s = SpecialTokens {
        bos: key("tokenizer.ggml.bos_token_id", defaults.bos)?,
        eos: key("tokenizer.ggml.eos_token_id", defaults.eos)?,
        eot: key("tokenizer.ggml.eot_token_id", None)?,
        eom: key("tokenizer.ggml.eom_token_id", None)?,
        unk: key("tokenizer.ggml.unknown_token_id", defaults.unk)?,
        // "seperator" is how the GGUF spec spells it.
        sep: key("tokenizer.ggml.seperator_token_id", None)?,
        pad: key("tokenizer.ggml.padding_token_id", None)?,
        add_bos: flag(meta, "tokenizer.ggml.add_bos_token", defaults.add_bos)?,
        add_eos: flag(meta, "tokenizer.ggml.add_eos_token", false)?,
        eog: BTreeSet::new(),
    };
    let mut fim_pre = key("tokenizer.ggml.fim_pre_token_id", None)?;
    let mut fim_suf = key("tokenizer.ggml.fim_suf_token_id", None)?;
    let mut fim_mid = key("tokenizer.ggml.fim_mid_token_id", None)?;
    let mut fim_pad = key("tokenizer.ggml.fim_pad_token_id", None)?;
    let mut fim_rep = key("tokenizer.ggml.fim_rep_token_id", None)?;
    let mut fim_sep = key("tokenizer.ggml.fim_sep_token_id", None)?;
    if s.add_bos && s.bos.is_none() {
        return Err(TokenizerError::MissingSpecial("add_bos_token"));
    }
    if s.add_eos && s.eos.is_none() {
        return Err(TokenizerError::MissingSpecial("add_eos_token"));
    }

    // Roles still unset are found by name; llama.cpp walks a hash map, so
    // its pick among several candidates is arbitrary: we take the lowest id.
    let roles: [(&mut Option<u32>, &[&str]); 8] = [
        (&mut s.eot, EOT_NAMES),
        (&mut s.eom, EOM_NAMES),
        (&mut fim_pre, FIM_PRE_NAMES),
        (&mut fim_suf, FIM_SUF_NAMES),
        (&mut fim_mid, FIM_MID_NAMES),
        (&mut fim_pad, FIM_PAD_NAMES),
        (&mut fim_rep, FIM_REP_NAMES),
        (&mut fim_sep, FIM_SEP_NAMES),
    ];
    for (slot, names) in roles {
        if slot.is_none() {
            let found = names.iter().filter_map(|t| vocab.id(t)).min();
            if let Some(id) = found {
                *slot = Some(id);
                vocab.add_attr(id, attr::CONTROL);
            }
        }
    }

    // Control tokens named "unused" are placeholders.
    for id in 0..n as u32 {
        let a = vocab.attr(id);
        if a & attr::CONTROL != 0 && vocab.text(id).is_some_and(|t| t.contains("unused")) {
            vocab.add_attr(id, attr::UNUSED);
        }
    }

    s.eog
        .extend([fim_pad, fim_rep, fim_sep].into_iter().flatten());
    for name in EOG_NAMES {
        if let Some(id) = vocab.id(name) {
            s.eog.insert(id);
            vocab.add_attr(id, attr::CONTROL);
        }
    }
    for name in ALWAYS_RENDERED {
        if let Some(id) = vocab.id(name) {
            vocab.set_attr(id, attr::USER_DEFINED);
        }
    }
    s.eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());

    // gpt-oss and solar-open use "<|end|>" between turns, not to stop.
    let has = |s: &SpecialTokens, v: &Vocab, t: &str| v.id(t).is_some_and(|id| s.eog.contains(&id));
    let ret = has(&s, vocab, "<|return|>");
    let call = has(&s, vocab, "<|call|>") || has(&s, vocab, "<|calls|>");
    let flush = has(&s, vocab, "<|flush|>");
    if let Some(end) = vocab.id("<|end|>").filter(|id| s.eog.contains(id)) {
        if call && (ret || flush) {
            s.eog.remove(&end);
            vocab.set_attr(end, attr::USER_DEFINED);
        }
    }
    // Gemma 4: "</s>" is ordinary text there.
    if has(&s, vocab, "<|tool_response>") {
        if let Some(eos) = vocab.id("</s>").filter(|id| s.eog.contains(id)) {
            s.eog.remove(&eos);
            vocab.set_attr(eos, attr::NORMAL);
        }
    }
    Ok(s)
}

pub(crate) fn flag(
    meta: &Metadata,
    key: &'static str,
    default: bool,
) -> Result<bool, TokenizerError> {
    match meta.get(key) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| TokenizerError::BadKey {
            key,
            detail: format!("expected a bool, got {v:?}"),
        }),
    }
}
