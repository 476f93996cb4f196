//! Byte-level builders for hand-made (often deliberately broken) GGUF and
//! safetensors files. The real writers refuse bad input, so the corpus is
//! built here, field by field.

#![allow(dead_code)]

/// Appends little-endian fields.
#[derive(Default, Clone)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version, tensor count, key/value count.
    pub fn gguf(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        r
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Raw {
        self.0.extend_from_slice(b);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Raw {
        self.bytes(&[v])
    }

    pub fn u32(&mut self, v: u32) -> &mut Raw {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Raw {
        self.bytes(&v.to_le_bytes())
    }

    /// A GGUF string: u64 length, bytes.
    pub fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    /// A key with a string value (type 8).
    pub fn kv_str(&mut self, key: &str, value: &str) -> &mut Raw {
        self.str(key).u32(8).str(value)
    }

    /// A key with a u32 value (type 4).
    pub fn kv_u32(&mut self, key: &str, value: u32) -> &mut Raw {
        self.str(key).u32(4).u32(value)
    }

    /// A tensor info: name, n_dims, ne[], ggml type, offset.
    pub fn tensor(&mut self, name: &str, ne: &[u64], ggml_type: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ggml_type).u64(offset)
    }

    /// Zero padding up to a multiple of `align`.
    pub fn pad(&mut self, align: usize) -> &mut Raw {
        let len = self.0.len().next_multiple_of(align);
        self.0.resize(len, 0);
        self
    }

    /// `n` filler bytes.
    pub fn fill(&mut self, n: usize) -> &mut Raw {
        self.0.extend((0..n).map(|i| i as u8));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// A safetensors file from a header string and a buffer length.
pub fn safetensors(header: &str, buffer_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend((0..buffer_len).map(|i| i as u8));
    out
}

/// The `Debug` name of an error kind's variant (`Truncated { .. }` →
/// `Truncated`), to compare with the corpus's expectations.
pub fn kind_name(kind: &impl std::fmt::Debug) -> String {
    format!("{kind:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// A valid safetensors file: tensors laid out in the order given.
pub fn safetensors_file(
    tensors: &[(&str, &str, &[usize], Vec<u8>)],
    metadata: &[(&str, &str)],
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let md = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(md));
    }
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        let entry = serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]});
        header.insert(name.to_string(), entry);
    }
    let mut header = serde_json::to_string(&header).unwrap_or_default();
    // Writers pad the header with spaces to 8 bytes; readers must cope.
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}
