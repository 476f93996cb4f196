//! safetensors reader on arbitrary bytes: Ok or a typed error, never a
//! panic; when it parses, every tensor's bytes match its dtype × shape.

#![no_main]

use kiln_loaders::safetensors::SafetensorsFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors") else {
        return;
    };
    for t in file.tensors() {
        let bytes = file.tensor_data(&t.name).expect("listed tensor has data");
        assert_eq!(bytes.len(), t.numel() * t.dtype.size());
    }
    if let Ok(weights) = file.weights() {
        for (_, w) in weights.iter() {
            assert_eq!(Some(w.bytes().len()), w.dtype().bytes_for(w.numel()));
        }
    }
});
