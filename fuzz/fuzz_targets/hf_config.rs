//! Arbitrary text as a Hugging Face config.json: Ok or Err, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern_formats::hf::HfConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = HfConfig::parse(std::path::Path::new("config.json"), text);
    }
});
