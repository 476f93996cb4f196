//! safetensors: single files, shards through an index, dtypes, metadata.

mod common;

use common::raw::safetensors_file;
use kiln_kernels::DType;
use kiln_loaders::safetensors::{SafeDtype, SafetensorsFile};
use kiln_loaders::{ErrorKind, SafetensorsModel};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn single_file_reads_dtypes_shapes_and_metadata() {
    let bytes = safetensors_file(
        &[
            (
                "model.norm.weight",
                "F32",
                &[3],
                f32_bytes(&[1.0, 2.0, 3.0]),
            ),
            (
                "model.embed_tokens.weight",
                "BF16",
                &[2, 2],
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ),
            ("h", "F16", &[1, 1, 2], vec![9; 4]),
            ("ids", "I32", &[2], vec![0; 8]),
            ("scalar", "F64", &[], vec![0; 8]),
            ("empty", "F32", &[0, 5], vec![]),
        ],
        &[("format", "pt")],
    );
    let file = SafetensorsFile::from_bytes(bytes, "m.safetensors").unwrap();
    assert_eq!(
        file.metadata().get("format").map(String::as_str),
        Some("pt")
    );
    assert_eq!(file.tensors().len(), 6);
    let norm = file.tensor("model.norm.weight").unwrap();
    assert_eq!((norm.dtype, norm.shape.clone()), (SafeDtype::F32, vec![3]));
    assert_eq!(
        file.tensor_data("model.norm.weight").unwrap(),
        &f32_bytes(&[1.0, 2.0, 3.0])[..]
    );

    let weights = file.weights().unwrap();
    let embd = weights.get("model.embed_tokens.weight").unwrap();
    assert_eq!(
        (embd.dtype(), embd.shape(), embd.bytes()),
        (
            DType::BF16,
            &[2usize, 2][..],
            &[1u8, 2, 3, 4, 5, 6, 7, 8][..]
        )
    );
    assert_eq!(weights.get("scalar").unwrap().shape(), &[] as &[usize]);
    assert_eq!(weights.get("empty").unwrap().bytes().len(), 0);
    let cpu = weights.get("model.norm.weight").unwrap().to_cpu().unwrap();
    assert_eq!(cpu.as_f32(), Some(&[1.0f32, 2.0, 3.0][..]));
    assert!(matches!(
        weights.require("nope").unwrap_err().kind,
        ErrorKind::TensorNotFound(_)
    ));
}

#[test]
fn dtypes_without_a_kiln_twin_are_recognized_but_not_loaded() {
    let bytes = safetensors_file(
        &[
            ("mask", "U8", &[4], vec![1; 4]),
            ("f8", "F8_E4M3", &[2], vec![0; 2]),
        ],
        &[],
    );
    let file = SafetensorsFile::from_bytes(bytes, "m.safetensors").unwrap();
    assert_eq!(file.tensor("mask").unwrap().dtype, SafeDtype::U8);
    let err = file.weights().unwrap_err();
    assert!(
        matches!(&err.kind, ErrorKind::UnsupportedDtype(d) if d == "U8"),
        "{err}"
    );
    assert_eq!(err.tensor.as_deref(), Some("mask"));
}

#[test]
fn sharded_checkpoint_through_index() {
    let dir = common::temp_dir("shards");
    let s1 = safetensors_file(
        &[
            ("a", "F32", &[1], f32_bytes(&[1.0])),
            ("b", "F32", &[1], f32_bytes(&[2.0])),
        ],
        &[],
    );
    let s2 = safetensors_file(&[("c", "F16", &[2], vec![0; 4])], &[]);
    std::fs::write(dir.join("model-00001-of-00002.safetensors"), s1).unwrap();
    std::fs::write(dir.join("model-00002-of-00002.safetensors"), s2).unwrap();
    let index = r#"{"metadata": {"total_size": 12}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();

    for path in [dir.clone(), dir.join("model.safetensors.index.json")] {
        let model = SafetensorsModel::open(&path).unwrap();
        assert_eq!(model.files().len(), 2);
        let w = model.weights().unwrap();
        assert_eq!(w.names().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(w.get("c").unwrap().dtype(), DType::F16);
        assert_eq!(model.dir(), dir.as_path());
    }

    // An index naming a tensor its shard lacks.
    let bad = index.replace(r#""c": "model-00002"#, r#""d": "model-00002"#);
    std::fs::write(dir.join("model.safetensors.index.json"), bad).unwrap();
    let err = SafetensorsModel::open(&dir).err().unwrap();
    assert!(
        matches!(&err.kind, ErrorKind::TensorNotFound(t) if t == "d"),
        "{err}"
    );

    // An index reaching outside its directory.
    let escape = r#"{"weight_map": {"a": "../model-00001-of-00002.safetensors"}}"#;
    std::fs::write(dir.join("model.safetensors.index.json"), escape).unwrap();
    let err = SafetensorsModel::open(&dir).err().unwrap();
    assert!(matches!(err.kind, ErrorKind::BadIndex(_)), "{err}");
}

#[test]
fn a_tensor_in_two_shards_is_an_error() {
    let dir = common::temp_dir("dup-shards");
    let s = safetensors_file(&[("a", "F32", &[1], f32_bytes(&[1.0]))], &[]);
    std::fs::write(dir.join("x.safetensors"), &s).unwrap();
    std::fs::write(dir.join("y.safetensors"), &s).unwrap();
    let model = SafetensorsModel::open(&dir).unwrap();
    let err = model.weights().unwrap_err();
    assert!(matches!(err.kind, ErrorKind::DuplicateTensor), "{err}");
    assert!(err.file.ends_with("y.safetensors"), "{err}");
}
