//! Test data shared by the formats integration tests.

/// The ternary generator of `../shared/vectors/bitnet-cpp/README.md` (also used by the TQ
/// vectors): t = (x mod 3) − 1 for flat row-major index i.
pub fn vector_codes(rows: usize, cols: usize, seed: u64) -> Vec<i8> {
    (0..(rows * cols) as u64)
        .map(|i| {
            let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(seed);
            x ^= x >> 31;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 29;
            (x % 3) as i8 - 1
        })
        .collect()
}
