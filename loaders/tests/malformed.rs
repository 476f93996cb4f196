//! Exhaustive small-file abuse: every truncation and many byte mutations of
//! valid GGUF and safetensors files must give an error or a valid file,
//! never a panic; truncations must give the right kind of error.

mod common;

use common::raw::{kind_name, safetensors_file};
use kiln_kernels::DType;
use kiln_loaders::safetensors::SafetensorsFile;
use kiln_loaders::{GgufFile, GgufWriter, Value, ValueType};

fn small_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.add("llama.block_count", Value::U32(2)).unwrap();
    w.add(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, vec![Value::String("a".into()); 3]),
    )
    .unwrap();
    w.add(
        "t.nested",
        Value::Array(
            ValueType::Array,
            vec![Value::Array(ValueType::I16, vec![Value::I16(-1)])],
        ),
    )
    .unwrap();
    w.add_tensor("a", DType::F32, &[2, 3], vec![1; 24]).unwrap();
    w.add_tensor("b", DType::Q4_0, &[1, 32], vec![2; 18])
        .unwrap();
    w.to_bytes().unwrap()
}

fn small_safetensors() -> Vec<u8> {
    safetensors_file(
        &[
            ("a", "F32", &[2, 2], vec![1; 16]),
            ("b", "BF16", &[3], vec![2; 6]),
            ("c", "I64", &[], vec![3; 8]),
        ],
        &[("format", "pt")],
    )
}

/// Reads everything a caller could touch, so a lazily-reached bug shows.
fn exercise_gguf(bytes: Vec<u8>) -> Result<(), kiln_loaders::LoadError> {
    let file = GgufFile::from_bytes(bytes, "mut.gguf")?;
    for t in file.tensors() {
        assert_eq!(file.tensor_data(&t.name)?.len(), t.byte_size);
    }
    for (_, w) in file.weights().iter() {
        assert_eq!(w.bytes().len(), w.dtype().bytes_for(w.numel()).unwrap());
    }
    Ok(())
}

fn exercise_safetensors(bytes: Vec<u8>) -> Result<(), kiln_loaders::LoadError> {
    let file = SafetensorsFile::from_bytes(bytes, "mut.safetensors")?;
    for t in file.tensors() {
        assert_eq!(file.tensor_data(&t.name)?.len(), t.byte_size());
    }
    let _ = file.weights();
    Ok(())
}

#[test]
fn gguf_truncated_at_every_byte() {
    let full = small_gguf();
    let file = GgufFile::from_bytes(full.clone(), "full").unwrap();
    // Cutting only the last tensor's padding still leaves a readable file.
    let last_end = file
        .tensors()
        .iter()
        .map(|t| file.data_offset() + t.offset as usize + t.byte_size)
        .max()
        .unwrap();
    for len in 0..full.len() {
        let got = exercise_gguf(full[..len].to_vec());
        match got {
            Ok(()) => assert!(len >= last_end, "prefix of {len} bytes parsed"),
            Err(e) => {
                let kind = kind_name(&e.kind);
                let ok = [
                    "Truncated",
                    "CountTooLarge",
                    "LengthTooLarge",
                    "TensorPastEnd",
                ];
                assert!(ok.contains(&kind.as_str()), "prefix {len}: {e}");
            }
        }
    }
}

#[test]
fn safetensors_truncated_at_every_byte() {
    let full = small_safetensors();
    exercise_safetensors(full.clone()).unwrap();
    for len in 0..full.len() {
        let e = exercise_safetensors(full[..len].to_vec()).expect_err("a prefix is never valid");
        let kind = kind_name(&e.kind);
        let ok = [
            "Truncated",
            "HeaderPastEnd",
            "OffsetsOutOfRange",
            "DataHole",
        ];
        assert!(ok.contains(&kind.as_str()), "prefix {len}: {e}");
    }
}

/// Every byte set to a few telling values: must not panic (errors or
/// valid files are both fine).
#[test]
fn gguf_byte_mutations_never_panic() {
    let full = small_gguf();
    for i in 0..full.len() {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut m = full.clone();
            m[i] = v;
            let _ = exercise_gguf(m);
        }
    }
}

#[test]
fn safetensors_byte_mutations_never_panic() {
    let full = small_safetensors();
    for i in 0..full.len() {
        for v in [b'0', b'9', b'"', b'{', b'[', b'-', 0x00, 0xff] {
            let mut m = full.clone();
            m[i] = v;
            let _ = exercise_safetensors(m);
        }
    }
}
