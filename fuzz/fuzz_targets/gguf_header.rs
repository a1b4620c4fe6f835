//! Arbitrary bytes as a whole GGUF file: the parser returns Ok or Err, never panics, hangs or
//! allocates without bound; on Ok every tensor's byte range lies inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern_formats::gguf::parse_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_header(data) {
        for t in &h.tensors {
            assert!(t.offset.checked_add(t.size).is_some_and(|end| end <= data.len() as u64));
            let _ = t.rows_cols();
        }
        for (key, _) in h.metadata.iter() {
            let _ = h.metadata.get(key);
        }
    }
});
