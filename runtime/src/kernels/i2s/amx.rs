//! The prompt GEMM on AMX-INT8 tiles (Intel Sapphire Rapids and later), for the layouts whose
//! rows unpack to unsigned codes c = t + 1 (I2_S, TQ2_0, TQ1_0): one `tdpbusd` multiplies a
//! 16 × 64 tile of codes by a 64 × 16 tile of int8 activations into 16 × 16 i32 sums, 16384
//! exact multiply-adds, where AVX-512 VNNI's `vpdpbusd` does 32 (one core of the 2026-12 Intel
//! Xeon host: about 1000 G multiply-adds/s in a loop of `tdpbusd` alone, against 90 for the VNNI
//! GEMM; docs/benchmarks.md). The sums are integers, so the results are the scalar kernel's bits.
//!
//! Layout. A tile (`tmm4`, `tmm5`): 16 weight rows × 64 codes, straight from a buffer of
//! unpacked code rows (stride k). B tile (`tmm6`, `tmm7`): 16 rows of 64 bytes, row `i` holding
//! activations `4i..4i+3` of each of 16 tokens, from a [`Panel`] built once per input. C tiles
//! (`tmm0..tmm3`): two row blocks × two token groups, started at −Σq of each token (the codes are
//! t + 1) by a stride-0 load, so they end as Σ t·q.
//!
//! The tile registers are not operands the compiler knows: each `asm!` block names them itself,
//! and nothing else in the process touches them between blocks (Rust never emits AMX code).

use crate::cpu;
use std::arch::asm;

/// Weight rows per A tile and tokens per B tile.
const TILE: usize = 16;
/// Bytes of K per tile step (64 codes).
const K_STEP: usize = 64;

/// Activations laid out as B tiles: for each group of 16 tokens (the last padded with zeros) and
/// each 64-wide step of k, 1 KiB: row i holds activations 4i..4i+3 of the step for tokens
/// 0..16 in turn. With the negated Σq of each token, one row of 16 per group.
pub struct Panel {
    bytes: Vec<i8>,
    neg_sums: Vec<i32>,
    tokens: usize,
    k: usize,
}

impl Panel {
    /// `acts`: `sums.len()` tokens of `k` activations, `k` a multiple of 64.
    pub fn new(acts: &[i8], sums: &[i32], k: usize) -> Panel {
        let tokens = sums.len();
        assert!(k.is_multiple_of(K_STEP) && acts.len() == tokens * k);
        let groups = tokens.div_ceil(TILE);
        let steps = k / K_STEP;
        let mut bytes = vec![0i8; groups * steps * TILE * K_STEP];
        for (t, act) in acts.chunks_exact(k).enumerate() {
            let (g, n) = (t / TILE, t % TILE);
            for (q, quad) in act.chunks_exact(4).enumerate() {
                let (step, i) = (q / TILE, q % TILE);
                let at = ((g * steps + step) * TILE + i) * K_STEP + 4 * n;
                bytes[at..at + 4].copy_from_slice(quad);
            }
        }
        let mut neg_sums = vec![0i32; groups * TILE];
        for (slot, &s) in neg_sums.iter_mut().zip(sums) {
            *slot = -s;
        }
        Panel { bytes, neg_sums, tokens, k }
    }

    /// Whether this panel holds `tokens` tokens of `k` activations.
    pub fn fits(&self, tokens: usize, k: usize) -> bool {
        (self.tokens, self.k) == (tokens, k)
    }

    fn groups(&self) -> usize {
        self.tokens.div_ceil(TILE)
    }

    fn b_tile(&self, group: usize, step: usize) -> *const i8 {
        let steps = self.k / K_STEP;
        self.bytes[(group * steps + step) * TILE * K_STEP..].as_ptr()
    }
}

/// The tile configuration `ldtilecfg` reads: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = {
    let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    let mut i = 0;
    while i < 8 {
        c.colsb[i] = 64;
        c.rows[i] = 16;
        i += 1;
    }
    c
};

/// `out[r·tokens + t] = Σ t·q` of the first 16·⌊rows/16⌋ rows against the panel's tokens; returns
/// how many rows that is (the caller does the rest). `unpack(row, codes)` fills a row's k codes.
///
/// # Safety
/// [`cpu::amx_int8`] must have returned true; `unpack` must be safe to call on this CPU and fill
/// `panel.k` codes from a `row_bytes` row; `rows.len()` a multiple of `row_bytes` and
/// `out.len() == rows.len() / row_bytes · panel.tokens`.
pub(crate) unsafe fn gemm_rows(
    rows: &[u8],
    row_bytes: usize,
    panel: &Panel,
    out: &mut [i32],
    unpack: super::Unpack,
) -> usize {
    debug_assert!(cpu::amx_int8());
    let (k, tokens) = (panel.k, panel.tokens);
    let blocks = rows.len() / row_bytes / TILE;
    debug_assert_eq!(out.len(), rows.len() / row_bytes * tokens);
    // Two row blocks of codes at a time; a lone last block is paired with itself (its second
    // results are dropped).
    let mut codes = vec![0u8; 2 * TILE * k];
    let mut c_tile = [0i32; TILE * TILE];
    // SAFETY: the caller checked AMX (and the OS's permission); CONFIG describes eight valid
    // 16 × 64-byte tiles.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
    let mut block = 0;
    while block < blocks {
        let pair = (blocks - block).min(2);
        for (r, c) in codes.chunks_exact_mut(k).take(pair * TILE).enumerate() {
            let row = &rows[(block * TILE + r) * row_bytes..(block * TILE + r + 1) * row_bytes];
            // SAFETY: the caller's contract on unpack.
            unsafe { unpack(row, c) };
        }
        let a0 = codes.as_ptr();
        let a1 = if pair == 2 { a0.wrapping_add(TILE * k) } else { a0 };
        let mut group = 0;
        while group < panel.groups() {
            let g1 = (group + 1).min(panel.groups() - 1);
            let (s0, s1) = (panel.neg_sums[group * TILE..].as_ptr(), panel.neg_sums[g1 * TILE..].as_ptr());
            // SAFETY: each load reads 16 rows of 64 bytes: from the neg-sum row (stride 0), from
            // 16 code rows of k (stride k, k ≥ 64 at step·64), from a 1 KiB panel tile.
            unsafe {
                asm!(
                    "tileloadd tmm0, [{s0} + {zero}*1]",
                    "tileloadd tmm1, [{s1} + {zero}*1]",
                    "tileloadd tmm2, [{s0} + {zero}*1]",
                    "tileloadd tmm3, [{s1} + {zero}*1]",
                    s0 = in(reg) s0, s1 = in(reg) s1, zero = in(reg) 0usize,
                    options(nostack, readonly),
                );
                for step in 0..k / K_STEP {
                    asm!(
                        "tileloadd tmm4, [{a0} + {k}*1]",
                        "tileloadd tmm6, [{b0} + {sixty_four}*1]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {sixty_four}*1]",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {k}*1]",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(step * K_STEP),
                        a1 = in(reg) a1.add(step * K_STEP),
                        b0 = in(reg) panel.b_tile(group, step),
                        b1 = in(reg) panel.b_tile(g1, step),
                        k = in(reg) k,
                        sixty_four = in(reg) K_STEP,
                        options(nostack, readonly),
                    );
                }
            }
            for (rb, gi, g) in [(0, 0, group), (0, 1, g1), (1, 0, group), (1, 1, g1)] {
                if (rb == 1 && pair == 1) || (gi == 1 && g1 == group) {
                    continue;
                }
                // SAFETY: c_tile holds 16 rows of 64 bytes.
                unsafe {
                    match 2 * rb + gi {
                        0 => {
                            asm!("tilestored [{} + {}*1], tmm0", in(reg) c_tile.as_mut_ptr(), in(reg) 64usize, options(nostack))
                        }
                        1 => {
                            asm!("tilestored [{} + {}*1], tmm1", in(reg) c_tile.as_mut_ptr(), in(reg) 64usize, options(nostack))
                        }
                        2 => {
                            asm!("tilestored [{} + {}*1], tmm2", in(reg) c_tile.as_mut_ptr(), in(reg) 64usize, options(nostack))
                        }
                        _ => {
                            asm!("tilestored [{} + {}*1], tmm3", in(reg) c_tile.as_mut_ptr(), in(reg) 64usize, options(nostack))
                        }
                    }
                }
                let valid = (tokens - g * TILE).min(TILE);
                for (i, sums) in c_tile.chunks_exact(TILE).enumerate() {
                    let r = (block + rb) * TILE + i;
                    out[r * tokens + g * TILE..][..valid].copy_from_slice(&sums[..valid]);
                }
            }
            group += 2;
        }
        block += pair;
    }
    // SAFETY: releases this thread's tile state (AMX was configured above).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    blocks * TILE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row r of the AMX GEMM against each token equals the scalar dot, on shapes with odd row
    /// blocks, rows past the last block, partial token groups and an odd number of groups.
    #[test]
    fn amx_gemm_equals_the_scalar_dots() {
        if !cpu::amx_int8() {
            eprintln!("no AMX-INT8 here: skipped");
            return;
        }
        let mut next = crate::bench::xorshift(0x9e37_79b9_7f4a_7c15);
        for (rows, k, tokens) in [(16, 128, 16), (48, 256, 5), (37, 128, 33), (64, 2560, 64), (32, 384, 17)] {
            let rb = k / 4;
            // Valid codes only (0..2 per 2 bits), as the loader guarantees.
            let packed: Vec<u8> = (0..rows * rb)
                .map(|_| (0..4).fold(0u8, |b, i| b | (((next() >> (8 * i)) % 3) as u8) << (2 * i)))
                .collect();
            let acts: Vec<i8> = (0..tokens * k).map(|_| (next() % 256) as u8 as i8).collect();
            let sums: Vec<i32> = acts.chunks_exact(k).map(|a| a.iter().map(|&v| v as i32).sum()).collect();
            let panel = Panel::new(&acts, &sums, k);
            let mut got = vec![i32::MIN; rows * tokens];
            // SAFETY: AMX was detected; unpack_codes_avx2 needs AVX2, which AMX hosts have.
            let done =
                unsafe { gemm_rows(&packed, rb, &panel, &mut got, super::super::x86::unpack_codes_avx2) };
            assert_eq!(done, rows / 16 * 16);
            for r in 0..done {
                for t in 0..tokens {
                    let want = super::super::scalar::dot(
                        &packed[r * rb..(r + 1) * rb],
                        &acts[t * k..(t + 1) * k],
                        sums[t],
                    );
                    assert_eq!(got[r * tokens + t], want, "{rows}x{k}, {tokens} tokens: row {r} token {t}");
                }
            }
        }
    }
}
