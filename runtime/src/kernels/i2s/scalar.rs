//! The scalar I2_S dot: decode every 2-bit code and multiply. Obviously right, and slow.

use tern_formats::i2s;

pub(super) fn dot(row: &[u8], act: &[i8], _act_sum: i32) -> i32 {
    act.iter().enumerate().map(|(i, &q)| (i2s::code_at(row, i) as i32 - 1) * q as i32).sum()
}
