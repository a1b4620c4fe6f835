//! I2_S tiles: the form the AVX-512 VNNI kernels read I2_S and TQ2_0 matrices in, repacked once
//! at load from the file's bytes (I2_S's bytes rearranged; TQ2_0's codes, the same 2-bit codes in
//! another order, rewritten in I2_S's). Rows come in tiles of 16, one per 32-bit lane of a
//! 512-bit register, so one `vpdpbusd` multiplies four weights of 16 rows by a broadcast of four
//! activations, no row needs a horizontal sum, and a matrix is one forward stream of tiles, which
//! one core streams closer to its read bandwidth than the file's rows read as four quarter
//! streams (docs/performance-notes.md, "I2_S tiles").
//!
//! A tile stores each 128-weight block of its rows as 8 groups of 64 bytes: byte 4r + i of group
//! g is row r's file byte 4g + i of that block, which holds the codes c = w + 1 of weights
//! 4g + i (bits 7-6), 32 + 4g + i (5-4), 64 + 4g + i (3-2) and 96 + 4g + i (1-0). Masking a
//! group with 0xC0, 0x30, 0x0C and 0x03 gives 64c, 16c, 4c and c of four consecutive weights
//! per lane, which `vpdpbusd` multiplies by the matching four activations into one accumulator
//! per mask, as I2_S's own VNNI kernel does; the exact shifts at the end give Σ c·q, and the
//! caller's Σq is taken off. Zero rows pad the last tile.
//!
//! Variants: scalar (the reference, reading each code from the tile) and AVX-512 VNNI, 1 to 4
//! tokens per pass (each group decoded once for all of them); exact, tested against each other
//! and against the naive product.

use crate::cpu::Isa;
use crate::pages::{ArenaBytes, TileArena};
use rayon::prelude::*;
use tern_formats::{Layout, i2s, tq2_0};

/// Rows per tile: one 32-bit lane per row of a 512-bit register.
pub const TILE_ROWS: usize = 16;
/// Weights per I2_S block, and a block's bytes in one tile.
const BLOCK: usize = 128;
const BLOCK_BYTES: usize = 32 * TILE_ROWS;
/// Tokens one pass of the VNNI kernel takes: four accumulators each stay in registers.
#[cfg(target_arch = "x86_64")]
const PASS: usize = 4;
/// How many blocks ahead a pass of several tokens asks for a tile's weights (4 KiB).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BLOCKS: usize = 8;

/// Whether `isa` runs products from I2_S tiles on this CPU: AVX-512 VNNI.
pub fn runs(isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && isa == Isa::Avx512Vnni && isa.supported()
}

/// Whether I2_S and TQ2_0 matrices are repacked to these tiles for `isa`: on AVX-512 VNNI,
/// unless AMX tiles run the prompts, which read the file's rows (the tiles are measured only
/// where AMX is absent). `TERN_I2S_TILES=off` keeps both on their own bytes, to compare.
pub fn wanted(isa: Isa, layout: Layout) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("TERN_I2S_TILES").as_deref() == Ok("off"));
    matches!(layout, Layout::I2S | Layout::TQ2_0) && runs(isa) && !crate::cpu::amx_int8() && !off
}

/// Bytes the tiles of a `rows × cols` I2_S matrix take.
pub fn tiles_bytes(rows: usize, cols: usize) -> usize {
    rows.div_ceil(TILE_ROWS) * TILE_ROWS * i2s::row_bytes(cols)
}

/// An I2_S matrix's weights as tiles, in a [`TileArena`].
pub struct I2sTiles {
    rows: usize,
    /// Weights per row, padded to whole blocks of 128.
    cols: usize,
    bytes: ArenaBytes,
}

impl std::fmt::Debug for I2sTiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I2sTiles({}x{})", self.rows, self.cols)
    }
}

impl I2sTiles {
    /// Tiles of an I2_S matrix of `rows × cols` weights from its file bytes (at least the
    /// packed rows; the scale after them is not read), in an arena of their own.
    pub fn from_i2s(bytes: &[u8], rows: usize, cols: usize) -> std::io::Result<I2sTiles> {
        I2sTiles::from_layout_in(None, Layout::I2S, bytes, rows, cols)
    }

    /// Tiles of an I2_S or TQ2_0 matrix of `rows × cols` weights from its file bytes (validated:
    /// no code 3), in the
    /// next free bytes of `arena` (a model's tiles share one, in call order, so a token's weights
    /// are one stream) or in memory of their own; a tile at a time on every thread; an error if
    /// the arena is full. TQ2_0's codes are the same 2-bit codes as I2_S's in another order (its
    /// per-block scales one β, which the loader checks), so both run on these tiles.
    pub fn from_layout_in(
        arena: Option<&TileArena>,
        layout: Layout,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> std::io::Result<I2sTiles> {
        let row_bytes = i2s::row_bytes(cols);
        let src_row = match layout {
            Layout::I2S => row_bytes,
            Layout::TQ2_0 if cols.is_multiple_of(tq2_0::BLOCK) => cols / tq2_0::BLOCK * tq2_0::BLOCK_BYTES,
            _ => panic!("I2_S tiles come from I2_S, or TQ2_0 in whole 256-weight blocks"),
        };
        assert!(bytes.len() >= rows * src_row, "{} bytes shorter than their rows", layout.name());
        let mut taken = ArenaBytes::take_from(arena, tiles_bytes(rows, cols))?;
        let tile_bytes = TILE_ROWS * row_bytes;
        taken
            .as_mut_slice()
            .par_chunks_mut(tile_bytes)
            .zip(bytes[..rows * src_row].par_chunks(TILE_ROWS * src_row))
            .for_each(|(tile, src)| {
                // TQ2_0 rows go through their codes into I2_S's bytes first.
                let (mut codes, mut i2s_row) = match layout {
                    Layout::TQ2_0 => (vec![0i8; cols], vec![0u8; row_bytes]),
                    _ => (Vec::new(), Vec::new()),
                };
                for (r, row) in src.chunks_exact(src_row).enumerate() {
                    let row = match layout {
                        Layout::TQ2_0 => {
                            for (block, out) in
                                row.chunks_exact(tq2_0::BLOCK_BYTES).zip(codes.chunks_exact_mut(tq2_0::BLOCK))
                            {
                                tq2_0::decode_block(block, out).expect("the loader rejects TQ2_0's code 3");
                            }
                            i2s::pack_row(&codes, &mut i2s_row);
                            &i2s_row[..]
                        }
                        _ => row,
                    };
                    for (b, block) in row.chunks_exact(32).enumerate() {
                        for (j, &byte) in block.iter().enumerate() {
                            tile[BLOCK_BYTES * b + 64 * (j / 4) + 4 * r + j % 4] = byte;
                        }
                    }
                }
            });
        Ok(I2sTiles { rows, cols: row_bytes * 4, bytes: taken })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The tiles' bytes: what the kernels read per token.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    fn tile_bytes(&self) -> usize {
        TILE_ROWS * self.cols / 4
    }
}

/// `out[(r − r0)·tokens + t] = Σ_k w[r,k]·q[t,k]` for rows `r0..r1` (`r0` a multiple of 16, `r1`
/// too or the last row): `acts` the tokens' activations (each padded to whole blocks), `sums`
/// their Σq.
pub fn gemm(isa: Isa, w: &I2sTiles, r0: usize, r1: usize, acts: &[i8], sums: &[i32], out: &mut [i32]) {
    let (k, tokens) = (w.cols, sums.len());
    assert!(r0.is_multiple_of(TILE_ROWS) && r0 <= r1 && r1 <= w.rows);
    assert!(r1.is_multiple_of(TILE_ROWS) || r1 == w.rows);
    assert_eq!((acts.len(), out.len()), (tokens * k, (r1 - r0) * tokens));
    if tokens == 0 {
        return;
    }
    let stride = w.tile_bytes();
    let tile = |i: usize| &w.bytes()[i * stride..][..stride];
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && runs(isa) {
        super::tile_products(r0, r1, sums, PASS, out, |i, tok, n| {
            // SAFETY: AVX-512 VNNI was detected (runs); the tile holds k / 128 blocks and each
            // token k activations.
            unsafe { x86::tile(tile(i), k / BLOCK, &acts[tok * k..(tok + n) * k], n) }
        });
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    for (i, o) in (r0 / TILE_ROWS..r1.div_ceil(TILE_ROWS)).zip(out.chunks_mut(TILE_ROWS * tokens)) {
        for (t, act) in acts.chunks_exact(k).enumerate() {
            for r in 0..o.len() / tokens {
                o[r * tokens + t] = row_scalar(tile(i), r, act) - sums[t];
            }
        }
    }
}

/// Σ c·q of row `r` of a tile, reading each code: the reference for the SIMD tile.
fn row_scalar(tile: &[u8], r: usize, act: &[i8]) -> i32 {
    let mut sum = 0;
    for (b, block) in tile.chunks_exact(BLOCK_BYTES).enumerate() {
        for j in 0..32 {
            let byte = block[64 * (j / 4) + 4 * r + j % 4];
            for p in 0..4 {
                let c = (byte >> (6 - 2 * p)) & 3;
                sum += c as i32 * act[BLOCK * b + 32 * p + j] as i32;
            }
        }
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, BLOCK_BYTES, PASS, PREFETCH_BLOCKS};
    use std::arch::x86_64::*;

    /// Σ c·q for the 16 rows of one tile against `n` tokens (1..=4) of `blocks · 128`
    /// activations each: lane r of slot j is row r, token j.
    ///
    /// # Safety
    /// AVX-512F/BW and VNNI; `tile` holds `blocks` blocks, `acts` n tokens.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(tile: &[u8], blocks: usize, acts: &[i8], n: usize) -> [[i32; 16]; 8] {
        assert!(
            tile.len() >= blocks * BLOCK_BYTES && (1..=PASS).contains(&n) && acts.len() >= n * blocks * BLOCK
        );
        let per_token = blocks * BLOCK;
        // SAFETY: the extents asserted above; the features enabled here.
        let sums: [__m512i; 8] = unsafe {
            match n {
                1 => widen(tile_pass::<1>(tile.as_ptr(), blocks, acts.as_ptr(), per_token)),
                2 => widen(tile_pass::<2>(tile.as_ptr(), blocks, acts.as_ptr(), per_token)),
                3 => widen(tile_pass::<3>(tile.as_ptr(), blocks, acts.as_ptr(), per_token)),
                _ => widen(tile_pass::<4>(tile.as_ptr(), blocks, acts.as_ptr(), per_token)),
            }
        };
        let mut out = [[0i32; 16]; 8];
        for (o, v) in out.iter_mut().zip(sums) {
            // SAFETY: 16 i32 into a 16-i32 array.
            unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, v) };
        }
        out
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn widen<const N: usize>(got: [__m512i; N]) -> [__m512i; 8] {
        std::array::from_fn(|j| if j < N { got[j] } else { _mm512_setzero_si512() })
    }

    /// The tile against N tokens: each group's four masked code vectors formed once, then four
    /// `vpdpbusd` per token. One token alternates two sets of accumulators by group, so no chain
    /// of dependent `vpdpbusd` sets the pace.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_pass<const N: usize>(
        tile: *const u8,
        blocks: usize,
        acts: *const i8,
        per_token: usize,
    ) -> [__m512i; N] {
        let masks = [0xc0u8, 0x30, 0x0c, 0x03].map(|m| _mm512_set1_epi8(m as i8));
        let mut acc = [[[_mm512_setzero_si512(); 4]; 2]; N];
        for b in 0..blocks {
            if N >= 2 {
                // Several tokens read each block for longer than the hardware prefetcher waits
                // for: asked for ahead, the weights arrive before they are needed.
                for line in 0..BLOCK_BYTES / 64 {
                    let ahead = tile.wrapping_add(BLOCK_BYTES * (b + PREFETCH_BLOCKS) + 64 * line);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
            }
            for g in 0..8 {
                // SAFETY: block b's group g lies inside the tile and its activations inside
                // every token's (the caller's extents). One token streams as fast without a
                // prefetch (the hardware prefetcher follows).
                unsafe {
                    let v = _mm512_loadu_si512(tile.add(BLOCK_BYTES * b + 64 * g) as *const __m512i);
                    let codes = masks.map(|m| _mm512_and_si512(v, m));
                    let set = if N == 1 { g % 2 } else { 0 };
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let a = acts.add(t * per_token + BLOCK * b + 4 * g);
                        for (p, &c) in codes.iter().enumerate() {
                            let q = _mm512_set1_epi32((a.add(32 * p) as *const i32).read_unaligned());
                            acc[set][p] = _mm512_dpbusd_epi32(acc[set][p], c, q);
                        }
                    }
                }
            }
        }
        acc.map(|[x, y]| {
            let s = |p: usize| _mm512_add_epi32(x[p], y[p]);
            let high = _mm512_add_epi32(_mm512_srai_epi32::<6>(s(0)), _mm512_srai_epi32::<4>(s(1)));
            _mm512_add_epi32(high, _mm512_add_epi32(_mm512_srai_epi32::<2>(s(2)), s(3)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Σ w·q row by row from the ternary codes themselves: the independent reference.
    fn naive(codes: &[i8], acts: &[i8], k: usize, r0: usize, r1: usize) -> Vec<i32> {
        let tokens = acts.len() / k;
        (r0..r1)
            .flat_map(|r| (0..tokens).map(move |t| (r, t)))
            .map(|(r, t)| (0..k).map(|j| codes[r * k + j] as i32 * acts[t * k + j] as i32).sum())
            .collect()
    }

    /// Every instruction set here gives the naive product from the tiles (of I2_S bytes, and of
    /// TQ2_0's where the rows are whole 256-weight blocks), on partial tiles, rows padded to a
    /// block, extreme activations, 1 to 9 tokens and a start past the first tile.
    #[test]
    fn tiles_give_the_naive_product() {
        let mut next = stream(11);
        for (m, k) in [(1, 128), (15, 256), (16, 100), (17, 384), (33, 2560), (40, 640)] {
            let codes: Vec<i8> = (0..m * k).map(|_| (next() % 3) as i8 - 1).collect();
            let bytes = i2s::pack(&codes, m, k, 1.0);
            let mut forms = vec![I2sTiles::from_i2s(&bytes, m, k).unwrap()];
            if k.is_multiple_of(tq2_0::BLOCK) {
                let tq2 = tq2_0::pack(&codes, m, k, 1.0);
                forms.push(I2sTiles::from_layout_in(None, Layout::TQ2_0, &tq2, m, k).unwrap());
            }
            let kp = i2s::row_bytes(k) * 4;
            for tokens in [1, 2, 3, 4, 5, 9] {
                let acts: Vec<i8> = (0..tokens * k)
                    .map(|i| {
                        if i % 7 == 0 {
                            -127
                        } else if i % 11 == 0 {
                            127
                        } else {
                            (next() % 255) as i8
                        }
                    })
                    .collect();
                let mut padded = vec![0i8; tokens * kp];
                for (dst, src) in padded.chunks_exact_mut(kp).zip(acts.chunks_exact(k)) {
                    dst[..k].copy_from_slice(src);
                }
                let sums: Vec<i32> =
                    padded.chunks_exact(kp).map(|a| a.iter().map(|&v| v as i32).sum()).collect();
                for (form, tiles) in forms.iter().enumerate() {
                    for isa in crate::cpu::available() {
                        for r0 in [0, 16].into_iter().filter(|&r| r < m) {
                            let mut out = vec![0; (m - r0) * tokens];
                            gemm(isa, tiles, r0, m, &padded, &sums, &mut out);
                            assert_eq!(
                                out,
                                naive(&codes, &acts, k, r0, m),
                                "{m}x{k} {tokens} tokens from row {r0} on {isa:?}, {}",
                                ["I2_S", "TQ2_0"][form]
                            );
                        }
                    }
                }
            }
        }
    }
}
