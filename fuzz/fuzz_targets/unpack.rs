//! Packed tensor data of every layout (see `cases::unpack_case`).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../cases.rs"]
mod cases;

fuzz_target!(|data: &[u8]| cases::unpack_case(data));
