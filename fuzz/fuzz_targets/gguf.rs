//! GGUF reader on arbitrary bytes: must return Ok or a typed error, never
//! panic, overflow or allocate past what the input can back. When a file
//! parses, every tensor view is touched and the file is rewritten: the
//! writer's output must read back and rewrite to the same bytes.

#![no_main]

use kiln_loaders::{GgufFile, GgufWriter};
use libfuzzer_sys::fuzz_target;

/// The file rewritten by our writer, or None when the writer refuses it
/// (e.g. a tensor name longer than llama.cpp allows, which we still read).
fn rewrite(file: &GgufFile) -> Option<Vec<u8>> {
    let mut w = GgufWriter::new();
    w.version(file.version()).ok()?;
    w.add_metadata(file.metadata()).ok()?;
    for t in file.tensors() {
        let data = file.tensor_data(&t.name).expect("listed tensor has data");
        w.add_tensor(&t.name, t.dtype, &t.shape, data).ok()?;
    }
    Some(w.to_bytes().expect("writer accepted every piece"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else {
        return;
    };
    for t in file.tensors() {
        let bytes = file.tensor_data(&t.name).expect("listed tensor has data");
        assert_eq!(bytes.len(), t.byte_size);
    }
    let weights = file.weights();
    assert_eq!(weights.len(), file.tensors().len());
    for (_, w) in weights.iter() {
        let _ = w.bytes().first();
    }
    if let Some(once) = rewrite(&file) {
        let again =
            GgufFile::from_bytes(once.clone(), "rewritten.gguf").expect("writer output reads back");
        assert_eq!(
            rewrite(&again).as_deref(),
            Some(&once[..]),
            "rewrite is stable"
        );
    }
});
