//! The prompt GEMM on AMX-INT8 tiles (Intel Sapphire Rapids and later), for the layouts whose
//! rows unpack to unsigned codes c = t + 1 (I2_S, TQ2_0, TQ1_0): one `tdpbusd` multiplies a
//! 16 × 64 tile of codes by a 64 × 16 tile of int8 activations into 16 × 16 i32 sums, 16384
//! exact multiply-adds, where AVX-512 VNNI's `vpdpbusd` does 32 (docs/performance-notes.md,
//! "Prompt GEMM"). The sums are integers, so the results are the scalar kernel's bits.
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
use rayon::prelude::*;
use std::arch::asm;
use std::cell::RefCell;

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
        // One task per group of 16 tokens: a prompt's panel is built before its first product,
        // while the other threads would wait.
        bytes.par_chunks_mut(steps * TILE * K_STEP).enumerate().for_each(|(g, group)| {
            for (n, act) in acts.chunks_exact(k).skip(g * TILE).take(TILE).enumerate() {
                for (q, quad) in act.chunks_exact(4).enumerate() {
                    let at = q * K_STEP + 4 * n;
                    group[at..at + 4].copy_from_slice(quad);
                }
            }
        });
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
    debug_assert_eq!(out.len(), rows.len() / row_bytes * panel.tokens);
    let k = panel.k;
    thread_local! {
        /// Each thread's code rows, kept between calls, because zeroing a fresh 80-220 KiB buffer
        /// per row chunk showed up in prompt profiles (`memset` in `perf`;
        /// docs/performance-notes.md, "Prompt GEMM"); every byte used is unpacked first.
        static CODES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    CODES.with_borrow_mut(|codes| {
        if codes.len() < 2 * TILE * k {
            codes.resize(2 * TILE * k, 0);
        }
        // SAFETY: forwarded from the caller.
        unsafe { gemm_rows_with(rows, row_bytes, panel, out, unpack, &mut codes[..2 * TILE * k]) }
    })
}

/// [`gemm_rows`] with its code buffer (two 16-row blocks of k codes).
///
/// # Safety
/// As [`gemm_rows`].
unsafe fn gemm_rows_with(
    rows: &[u8],
    row_bytes: usize,
    panel: &Panel,
    out: &mut [i32],
    unpack: super::Unpack,
    codes: &mut [u8],
) -> usize {
    let (k, tokens) = (panel.k, panel.tokens);
    let blocks = rows.len() / row_bytes / TILE;
    // Two row blocks of codes at a time; a lone last block is paired with itself (its second
    // results are dropped).
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

/// Unpacks an I2_S row into its codes as `x86::unpack_codes_avx2` does (the same bytes), with
/// 512-bit shifts: a block's 32 bytes twice in one register, each half shifted by its own count,
/// give 64 codes per `and` and store (8 operations per block instead of 13). AMX hosts have
/// AVX-512; the AMX GEMM unpacks every row once per prompt micro-batch, so the unpacker's speed
/// shows in a prompt's time (docs/performance-notes.md, "Prompt GEMM").
///
/// # Safety
/// The CPU must support AVX-512F/BW; `out.len() == row.len() * 4`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack_i2s_codes_avx512(row: &[u8], out: &mut [u8]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(out.len(), row.len() * 4);
    let mask = _mm512_set1_epi8(3);
    // Per 16-bit lane: the low 256 bits shift by the first count, the high by the second.
    let shifts = |lo: i16, hi: i16| _mm512_inserti64x4::<1>(_mm512_set1_epi16(lo), _mm256_set1_epi16(hi));
    let (first, second) = (shifts(6, 4), shifts(2, 0));
    for b in 0..row.len() / 32 {
        // SAFETY: 32 bytes of row and 128 of out for block b, in bounds.
        unsafe {
            let p = _mm256_loadu_si256(row.as_ptr().add(32 * b) as *const __m256i);
            let twice = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(p), p);
            let c0 = _mm512_and_si512(_mm512_srlv_epi16(twice, first), mask);
            let c1 = _mm512_and_si512(_mm512_srlv_epi16(twice, second), mask);
            _mm512_storeu_si512(out.as_mut_ptr().add(128 * b) as *mut __m512i, c0);
            _mm512_storeu_si512(out.as_mut_ptr().add(128 * b + 64) as *mut __m512i, c1);
        }
    }
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
            // The AVX-512 unpacker gives the AVX2 one's bytes, and the GEMM the same sums with it.
            let (mut a, mut b) = (vec![0u8; k], vec![0u8; k]);
            for row in packed.chunks_exact(rb) {
                // SAFETY: AMX hosts have AVX2 and AVX-512F/BW; k = 4·rb codes each.
                unsafe {
                    super::super::x86::unpack_codes_avx2(row, &mut a);
                    unpack_i2s_codes_avx512(row, &mut b);
                }
                assert_eq!(a, b);
            }
            let mut again = vec![i32::MIN; rows * tokens];
            // SAFETY: as above.
            unsafe { gemm_rows(&packed, rb, &panel, &mut again, unpack_i2s_codes_avx512) };
            assert_eq!(again[..done * tokens], got[..done * tokens]);
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
