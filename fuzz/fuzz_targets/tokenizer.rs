//! The SmolLM2 tokenizer (gpt2 byte-level BPE, smollm pre-tokenizer) on
//! arbitrary text: encoding never panics, and with special-token parsing
//! off, decoding the ids gives back exactly the text when it is printable
//! ASCII. Bytes whose GPT-2 characters the vocabulary lacks (SmolLM2 has no
//! token for 0x04, say) are dropped, as llama.cpp drops them, so for other
//! text one round trip must be stable: a second one changes nothing.
//! Arbitrary ids — in range or not — decode to text or a typed
//! error, and the streaming decoder agrees with the whole-sequence decode.
//!
//! The model is read once from `$KILN_TEST_MODEL`, else the default path
//! that `scripts/fetch-model.sh` fills.

#![no_main]

use std::sync::OnceLock;

use kiln_loaders::{EncodeOptions, GgufFile, Tokenizer};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = std::env::var("KILN_TEST_MODEL").unwrap_or_else(|_| {
            let home = std::env::var("KILN_HOME")
                .unwrap_or_else(|_| format!("{}/.cache/kiln", std::env::var("HOME").unwrap_or_default()));
            format!("{home}/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
        let file = GgufFile::open(&path).expect("run scripts/fetch-model.sh first");
        Tokenizer::from_gguf(file.metadata()).expect("the model's tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    let text = String::from_utf8_lossy(data);
    let plain = EncodeOptions { add_special: false, parse_special: false };
    let ids = tok.encode(&text, plain).expect("any text encodes");
    let once = tok.decode(&ids).expect("own ids decode");
    if text.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\t') {
        assert_eq!(once, text, "printable ASCII round-trips exactly");
    }
    let twice = tok.decode(&tok.encode(&once, plain).expect("decoded text encodes")).expect("decodes");
    assert_eq!(twice, once, "a round trip is stable");
    let _ = tok.encode(&text, EncodeOptions { add_special: true, parse_special: true });

    // The same bytes read as ids: decode must not panic on any of them.
    let raw: Vec<u32> = data.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
    if let Ok(whole) = tok.decode(&raw) {
        let mut stream = tok.stream_decoder(Default::default());
        let mut streamed = String::new();
        for &id in &raw {
            if let Some(piece) = stream.push(id).expect("ids decoded whole decode streamed") {
                streamed.push_str(&piece);
            }
        }
        streamed.push_str(&stream.flush().unwrap_or_default());
        assert_eq!(streamed, whole, "streaming agrees with decode");
    }
});
