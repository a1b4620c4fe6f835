//! aarch64 NEON I2_S dot (compile-checked with `cargo check --target aarch64-unknown-linux-gnu`;
//! this project's machines are x86, so it is not executed in CI — see docs/kernels.md). Codes are
//! extracted per byte with u8 shifts (no lane crossing), multiplied by the activations with
//! `smull`/`smull2` (codes ≤ 2 fit in i8) and accumulated pairwise into i32 (`sadalp`), then Σq is
//! subtracted. The `sdot` (dotprod) variant awaits hardware to test it on.

use std::arch::aarch64::*;

pub(super) fn dot_neon(row: &[u8], act: &[i8], act_sum: i32) -> i32 {
    debug_assert_eq!(act.len(), row.len() * 4);
    // SAFETY: only dispatched when NEON was detected.
    unsafe { dot_neon_impl(row, act) - act_sum }
}

#[target_feature(enable = "neon")]
unsafe fn dot_neon_impl(row: &[u8], act: &[i8]) -> i32 {
    let mask = vdupq_n_u8(3);
    let mut acc = vdupq_n_s32(0);
    let (w, a) = (row.as_ptr(), act.as_ptr());
    for b in 0..row.len() / 32 {
        for half in 0..2 {
            // SAFETY: 16 bytes of block b and the matching activations are in bounds.
            unsafe {
                let packed = vld1q_u8(w.add(32 * b + 16 * half));
                let q = a.add(128 * b + 16 * half);
                let codes = [
                    vandq_u8(vshrq_n_u8(packed, 6), mask),
                    vandq_u8(vshrq_n_u8(packed, 4), mask),
                    vandq_u8(vshrq_n_u8(packed, 2), mask),
                    vandq_u8(packed, mask),
                ];
                for (i, c) in codes.into_iter().enumerate() {
                    acc = madd16(acc, vreinterpretq_s8_u8(c), q.add(32 * i));
                }
            }
        }
    }
    vaddvq_s32(acc)
}

/// Σ c·q over 16 codes (≤ 2, so they fit in i8) and the 16 activations at `q`, multiplied with
/// `smull`/`smull2` and accumulated pairwise into `acc` (`sadalp`). Shared by the 2-bit and
/// base-3 NEON kernels.
///
/// # Safety
/// `q` must point to 16 readable bytes; the CPU must support NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn madd16(acc: int32x4_t, c: int8x16_t, q: *const i8) -> int32x4_t {
    // SAFETY: the caller guarantees 16 readable activations at q.
    let x = unsafe { vld1q_s8(q) };
    let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(c), vget_low_s8(x)));
    vpadalq_s16(acc, vmull_high_s8(c, x))
}
