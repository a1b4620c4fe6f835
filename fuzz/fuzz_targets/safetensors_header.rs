//! Arbitrary bytes as a safetensors file: Ok or Err, never a panic; on Ok every tensor's byte
//! range lies inside the input and matches its dtype × shape.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern_formats::safetensors_file::parse_tensors;

fuzz_target!(|data: &[u8]| {
    if let Ok((tensors, _)) = parse_tensors(data) {
        for t in &tensors {
            assert!(t.start <= t.end && t.end <= data.len());
        }
    }
});
