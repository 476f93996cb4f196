//! GgufWriter → GgufFile round trips: every metadata type, nested arrays,
//! every dtype's block layout, alignment, and the on-disk path.

mod common;

use kiln_kernels::DType;
use kiln_loaders::{ErrorKind, GgufFile, GgufWriter, Metadata, Value, ValueType};

fn every_value_type() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(250)),
        ("t.i8", Value::I8(-7)),
        ("t.u16", Value::U16(65000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(1.5e-5)),
        ("t.bool", Value::Bool(true)),
        ("t.string", Value::String("héllo ✓".into())),
        ("t.empty_string", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(-0.125)),
        (
            "t.arr_i32",
            Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]),
        ),
        (
            "t.arr_str",
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("".into())],
            ),
        ),
        ("t.arr_empty", Value::Array(ValueType::F32, vec![])),
        (
            "t.nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(2)]),
                    Value::Array(ValueType::String, vec![Value::String("x".into())]),
                    Value::Array(
                        ValueType::Array,
                        vec![Value::Array(ValueType::Bool, vec![Value::Bool(false)])],
                    ),
                ],
            ),
        ),
    ]
}

/// Deterministic filler bytes.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn metadata_of_every_type_round_trips() {
    for version in [2, 3] {
        let mut w = GgufWriter::new();
        w.version(version).unwrap();
        for (k, v) in every_value_type() {
            w.add(k, v).unwrap();
        }
        let file = GgufFile::from_bytes(w.to_bytes().unwrap(), "mem").unwrap();
        assert_eq!(file.version(), version);
        assert_eq!(file.metadata().len(), every_value_type().len());
        for (k, v) in every_value_type() {
            assert_eq!(file.metadata().get(k), Some(&v), "{k}");
        }
        assert!(file.tensors().is_empty());
    }
}

#[test]
fn tensors_of_every_dtype_round_trip() {
    let mut w = GgufWriter::new();
    let mut expect = Vec::new();
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        // Two rows of two blocks, plus a 3-d and a 4-d case for plain types.
        let shape = match i % 3 {
            0 => vec![2, dtype.block_size() * 2],
            1 => vec![3, 1, dtype.block_size()],
            _ => vec![1, 2, 1, dtype.block_size() * 3],
        };
        let n: usize = shape.iter().product();
        let data = bytes(dtype.bytes_for(n).unwrap(), i as u8);
        let name = format!("t{i}.{}", dtype.name());
        w.add_tensor(&name, dtype, &shape, data.clone()).unwrap();
        expect.push((name, dtype, shape, data));
    }
    let file = GgufFile::from_bytes(w.to_bytes().unwrap(), "mem").unwrap();
    assert_eq!(file.tensors().len(), expect.len());
    let weights = file.weights();
    for ((name, dtype, shape, data), info) in expect.iter().zip(file.tensors()) {
        assert_eq!(&info.name, name);
        assert_eq!(info.dtype, *dtype);
        assert_eq!(&info.shape, shape);
        assert_eq!(info.offset % 32, 0, "{name} is aligned");
        assert_eq!(file.tensor_data(name).unwrap(), &data[..]);
        let w = weights.get(name).unwrap();
        assert_eq!(
            (w.dtype(), w.shape(), w.bytes()),
            (*dtype, &shape[..], &data[..])
        );
    }
    // Names keep file order in the weight map.
    let names: Vec<_> = weights.names().collect();
    assert_eq!(
        names,
        expect.iter().map(|e| e.0.as_str()).collect::<Vec<_>>()
    );
}

#[test]
fn custom_alignment_pads_everything() {
    let mut w = GgufWriter::new();
    w.alignment(256).unwrap();
    w.add_tensor("a", DType::F32, &[3], bytes(12, 1)).unwrap();
    w.add_tensor("b", DType::F16, &[5], bytes(10, 2)).unwrap();
    let out = w.to_bytes().unwrap();
    let file = GgufFile::from_bytes(out.clone(), "mem").unwrap();
    assert_eq!(file.alignment(), 256);
    assert_eq!(file.data_offset() % 256, 0);
    assert_eq!(file.tensor("b").unwrap().offset, 256);
    // The last tensor is padded too, as llama.cpp expects.
    assert_eq!(out.len(), file.data_offset() + 512);
    assert_eq!(file.tensor_data("b").unwrap(), &bytes(10, 2)[..]);
}

#[test]
fn gguf_ne_order_is_reversed_shape() {
    let mut w = GgufWriter::new();
    w.add_tensor("m", DType::F32, &[2, 3], bytes(24, 0))
        .unwrap();
    let out = w.to_bytes().unwrap();
    // Header (24) + tensor info: name (8 + 1), n_dims (4), ne[0], ne[1].
    let ne0 = u64::from_le_bytes(out[24 + 9 + 4..24 + 9 + 12].try_into().unwrap());
    let ne1 = u64::from_le_bytes(out[24 + 9 + 12..24 + 9 + 20].try_into().unwrap());
    assert_eq!(
        (ne0, ne1),
        (3, 2),
        "ne[0] is the contiguous (last kiln) dimension"
    );
}

#[test]
fn metadata_copy_round_trips_through_disk() {
    let mut md = Metadata::new();
    for (k, v) in every_value_type() {
        md.insert(k, v);
    }
    let mut w = GgufWriter::new();
    w.add_metadata(&md).unwrap();
    w.add_tensor("x", DType::Q8_0, &[64], bytes(68, 3)).unwrap();
    let dir = common::temp_dir("roundtrip");
    let path = dir.join("m.gguf");
    w.write(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.metadata(), &md);
    assert_eq!(file.tensor_data("x").unwrap(), &bytes(68, 3)[..]);
    assert_eq!(
        file.file_size(),
        std::fs::metadata(&path).unwrap().len() as usize
    );
}

#[test]
fn real_model_rewrites_identically() {
    let Some(path) = common::test_model() else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new();
    w.add_metadata(file.metadata()).unwrap();
    for t in file.tensors() {
        w.add_tensor(
            &t.name,
            t.dtype,
            &t.shape,
            file.tensor_data(&t.name).unwrap(),
        )
        .unwrap();
    }
    let copy = GgufFile::from_bytes(w.to_bytes().unwrap(), "copy").unwrap();
    assert_eq!(copy.metadata(), file.metadata());
    assert_eq!(
        copy.tensors(),
        file.tensors(),
        "same infos, offsets included"
    );
    for t in file.tensors() {
        assert_eq!(
            copy.tensor_data(&t.name).unwrap(),
            file.tensor_data(&t.name).unwrap()
        );
    }
}

#[test]
fn writer_refuses_bad_input() {
    let kind = |r: Result<&mut GgufWriter, kiln_loaders::LoadError>| r.err().map(|e| e.kind);
    let mut w = GgufWriter::new();
    w.add("k", Value::U8(1)).unwrap();
    assert!(matches!(
        kind(w.add("k", Value::U8(2))),
        Some(ErrorKind::DuplicateKey(_))
    ));
    assert!(matches!(
        kind(w.alignment(48)),
        Some(ErrorKind::BadAlignment(48))
    ));
    assert!(matches!(
        kind(w.alignment(1 << 17)),
        Some(ErrorKind::BadAlignment(131072))
    ));
    assert!(matches!(
        kind(w.add("general.alignment", Value::U64(64))),
        Some(ErrorKind::BadMetadata { .. })
    ));
    let mixed = Value::Array(ValueType::U8, vec![Value::U8(1), Value::I8(1)]);
    assert!(matches!(
        kind(w.add("m", mixed)),
        Some(ErrorKind::MixedArray { .. })
    ));
    assert!(matches!(
        kind(w.version(1)),
        Some(ErrorKind::UnsupportedVersion(1))
    ));

    w.add_tensor("t", DType::F32, &[2], vec![0; 8]).unwrap();
    assert!(matches!(
        kind(w.add_tensor("t", DType::F32, &[2], vec![0; 8])),
        Some(ErrorKind::DuplicateTensor)
    ));
    assert!(matches!(
        kind(w.add_tensor("u", DType::F32, &[2], vec![0; 7])),
        Some(ErrorKind::SizeMismatch { .. })
    ));
    assert!(matches!(
        kind(w.add_tensor("v", DType::Q4_0, &[2, 16], vec![0; 18])),
        Some(ErrorKind::RowNotBlockMultiple { row: 16, .. })
    ));
    assert!(matches!(
        kind(w.add_tensor("w", DType::F32, &[1, 1, 1, 1, 1], vec![0; 4])),
        Some(ErrorKind::TooManyDims { n_dims: 5, .. })
    ));
    assert!(matches!(
        kind(w.add_tensor("x", DType::F32, &[usize::MAX, 2], vec![])),
        Some(ErrorKind::ShapeOverflow { .. })
    ));
    assert!(matches!(
        kind(w.add_tensor("n".repeat(64), DType::F32, &[1], vec![0; 4])),
        Some(ErrorKind::NameTooLong { .. })
    ));
}

/// A file written by the reference implementation (the `gguf` Python
/// package's GGUFWriter), also a fuzz seed.
#[test]
fn reads_a_file_written_by_gguf_py() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/python_small.gguf");
    let file = GgufFile::open(path).unwrap();
    let md = file.metadata();
    assert_eq!(md.architecture(), Some("llama"));
    assert_eq!(md.get("llama.block_count"), Some(&Value::U32(2)));
    assert_eq!(md.get("t.i8"), Some(&Value::I8(-3)));
    assert_eq!(md.get("t.f64"), Some(&Value::F64(0.5)));
    assert_eq!(md.get_bool("tokenizer.ggml.add_bos_token"), Some(true));
    assert_eq!(
        md.get_array("tokenizer.ggml.tokens").map(<[_]>::len),
        Some(3)
    );
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.dtype, embd.shape.clone()), (DType::F32, vec![3, 8]));
    let values: Vec<f32> = file
        .tensor_data("token_embd.weight")
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, (0..24).map(|i| i as f32).collect::<Vec<_>>());
    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.dtype, q.shape.clone()), (DType::Q8_0, vec![2, 32]));
    assert_eq!(file.tensor("norm.weight").unwrap().dtype, DType::F16);
}

#[test]
fn streamed_tensors_give_the_same_file_as_whole_ones() {
    let a = bytes(4 * 5, 1); // F32 [5]
    let b = bytes(2 * 34, 2); // Q8_0 [2, 32]
    let c = bytes(3 * 2, 3); // F16 [3]
    let mut whole = GgufWriter::new();
    whole.add("general.alignment", Value::U32(64)).unwrap();
    whole.add_tensor("a", DType::F32, &[5], a.clone()).unwrap();
    whole
        .add_tensor("b", DType::Q8_0, &[2, 32], b.clone())
        .unwrap();
    whole.add_tensor("c", DType::F16, &[3], c.clone()).unwrap();

    // `a` and `c` carry their data; `b` is declared and streamed.
    let mut streamed = GgufWriter::new();
    streamed.add("general.alignment", Value::U32(64)).unwrap();
    streamed.add_tensor("a", DType::F32, &[5], a).unwrap();
    streamed.declare_tensor("b", DType::Q8_0, &[2, 32]).unwrap();
    streamed.add_tensor("c", DType::F16, &[3], c).unwrap();
    let mut stream = streamed.stream(Vec::new()).unwrap();
    stream.write_tensor("b", &b).unwrap();
    let out = stream.finish().unwrap();
    assert_eq!(out, whole.to_bytes().unwrap());
    let file = GgufFile::from_bytes(out, "streamed.gguf").unwrap();
    assert_eq!(file.tensor_data("b").unwrap(), &b[..]);
}

#[test]
fn streams_refuse_wrong_order_sizes_and_missing_tensors() {
    let mut w = GgufWriter::new();
    w.declare_tensor("x", DType::F32, &[2]).unwrap();
    w.declare_tensor("y", DType::F32, &[3]).unwrap();
    let kind = |e: kiln_loaders::LoadError| e.kind;

    // Whole-file writes need every tensor's data, and write nothing without.
    assert!(matches!(
        w.to_bytes().map_err(kind),
        Err(ErrorKind::MissingTensorData)
    ));
    let mut sink = Vec::new();
    assert!(w.write_to(&mut sink).is_err());
    assert!(sink.is_empty());

    let mut s = w.stream(Vec::new()).unwrap();
    match s.write_tensor("y", &[0; 12]).map_err(kind) {
        Err(ErrorKind::StreamOrder { expected }) => assert_eq!(expected.as_deref(), Some("x")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.write_tensor("x", &[0; 7]).map_err(kind),
        Err(ErrorKind::SizeMismatch {
            expected: 8,
            got: 7
        })
    ));
    s.write_tensor("x", &[0; 8]).unwrap();
    let err = s.finish().err().unwrap();
    assert!(matches!(err.kind, ErrorKind::MissingTensorData));
    assert_eq!(err.tensor.as_deref(), Some("y"));

    let mut s = w.stream(Vec::new()).unwrap();
    s.write_tensor("x", &[0; 8]).unwrap();
    s.write_tensor("y", &[0; 12]).unwrap();
    assert!(matches!(
        s.write_tensor("z", &[]).map_err(kind),
        Err(ErrorKind::StreamOrder { expected: None })
    ));
    let bytes = s.finish().unwrap();
    assert_eq!(
        GgufFile::from_bytes(bytes, "s.gguf")
            .unwrap()
            .tensors()
            .len(),
        2
    );
    assert!(matches!(
        w.declare_tensor("x", DType::F32, &[2])
            .map(drop)
            .map_err(kind),
        Err(ErrorKind::DuplicateTensor)
    ));
}
