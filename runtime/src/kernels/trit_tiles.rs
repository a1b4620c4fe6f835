//! Trit tiles: the form the AVX-512 VNNI kernels read TL1, TL2 and TQ1_0 matrices in, repacked
//! once at load from the file's bytes. Those decode with several operations per weight (TL1's and
//! TL2's 32-row lookup tables, TL2's scattered sign words, TQ1_0's base-3 digit walk); here one 512-bit
//! `vpshufb` per digit turns 64 stored triples into codes w + 1 with four triples of one row in
//! each 32-bit lane, a masked subtract applies their signs, and `vpdpbusd` multiplies the lanes
//! by a broadcast of the four matching activations, so one token streams 1.67 bits per weight
//! at about I2_S's cost per weight.
//!
//! Every three weights (w0, w1, w2) of a row are v = 9·w0 + 3·w1 + w2 (−13..=13, TL2's code),
//! stored as the 4-bit |v| and a sign bit. Rows come in tiles of 16 (the last padded with zero
//! weights), columns in groups of 24 (8 triples; padded to whole blocks of 4 groups). Group g
//! has 64 magnitude bytes — byte 4r + s: row r's triple s (columns 24g + 3s..) in the low
//! nibble, triple 4 + s (columns 24g + 12 + 3s..) in the high nibble — and two little-endian
//! u64 of signs, bit 4r + s for triple s, then for triple 4 + s. A block of 4 groups stores
//! their magnitudes, then their signs: 320 bytes, one forward stream per tile, which the
//! memory prefetchers follow far better than separate planes of magnitudes and signs.
//!
//! The kernels read a token's activations in the matching order ([`arrange`]): for group g, half
//! h and digit t, the four bytes `a[24g + 12h + 3s + t]`, s = 0..4. They compute Σ c·q with the
//! codes c = w + 1 and the caller's Σq subtracted, as the 2-bit kernels do.
//!
//! Variants: scalar (the reference, decoding each triple), AVX-512 VNNI; exact, tested against
//! each other and against the naive product.

use crate::cpu::Isa;
use crate::pages::{ArenaBytes, TileArena};
use rayon::prelude::*;
use tern_formats::tiles::Tiles;
use tern_formats::{Layout, tl1, tq1_0};

/// Rows per tile: one 32-bit lane per row of a 512-bit register.
pub const TILE_ROWS: usize = 16;
/// Columns per group: 8 triples, two per nibble of 4 lanes' bytes.
pub const GROUP_COLS: usize = 24;
/// Groups stored together: their magnitudes, then their signs, 320 bytes (5 cache lines).
const BLOCK_GROUPS: usize = 4;
const BLOCK_BYTES: usize = BLOCK_GROUPS * (64 + 16);

/// Bytes the trit tiles of a `rows × cols` matrix take.
pub fn tiles_bytes(rows: usize, cols: usize) -> usize {
    rows.div_ceil(TILE_ROWS) * tile_bytes(cols)
}

/// Groups per row (a whole number of blocks).
fn groups(k: usize) -> usize {
    k.div_ceil(GROUP_COLS).next_multiple_of(BLOCK_GROUPS)
}

/// Where group g's 64 magnitude bytes and 16 sign bytes start in a tile.
fn group_at(g: usize) -> (usize, usize) {
    let block = BLOCK_BYTES * (g / BLOCK_GROUPS);
    (block + 64 * (g % BLOCK_GROUPS), block + 64 * BLOCK_GROUPS + 16 * (g % BLOCK_GROUPS))
}

/// Bytes of one tile of 16 rows of `k` columns (a multiple of 64, so every load of magnitudes
/// stays within a cache line).
pub fn tile_bytes(k: usize) -> usize {
    groups(k) / BLOCK_GROUPS * BLOCK_BYTES
}

/// Bytes of one token's activations in the kernels' order.
pub fn arranged_len(k: usize) -> usize {
    groups(k) * GROUP_COLS
}

/// Whether `isa` runs products from trit tiles on this CPU: AVX-512 VNNI (with BW's 512-bit
/// `vpshufb`).
pub fn runs(isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && isa == Isa::Avx512Vnni && isa.supported()
}

/// Whether matrices of `layout` are repacked to trit tiles for `isa`: the lookup-table and base-3
/// layouts, whose own bytes decode slower than these (TL1, 2 bits per weight, also reads fewer).
/// `TERN_TRIT_TILES=off` keeps every layout on its own bytes, to compare.
pub fn wanted(isa: Isa, layout: Layout) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("TERN_TRIT_TILES").as_deref() == Ok("off"));
    matches!(layout, Layout::TL1 | Layout::TL2 | Layout::TQ1_0) && runs(isa) && !off
}

/// A matrix's weights as trit tiles, in page-aligned memory (asked for in 2 MiB pages where the
/// kernel allows it: fewer TLB misses while streaming).
pub struct TritTiles {
    rows: usize,
    cols: usize,
    map: ArenaBytes,
}

impl std::fmt::Debug for TritTiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TritTiles({}x{})", self.rows, self.cols)
    }
}

impl TritTiles {
    /// Zeroed tiles for `rows × cols`, in `arena` (a model's tiles share one, in call order, so
    /// a token's weights are one stream) or in memory of their own.
    fn zeroed(arena: Option<&TileArena>, rows: usize, cols: usize) -> std::io::Result<TritTiles> {
        Ok(TritTiles { rows, cols, map: ArenaBytes::take_from(arena, tiles_bytes(rows, cols))? })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The tiles' bytes (`rows.div_ceil(16) · tile_bytes(cols)`).
    pub fn bytes(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// Trit tiles of the `m × k` codes (each −1, 0 or 1, row-major).
    pub fn pack(codes: &[i8], m: usize, k: usize) -> std::io::Result<TritTiles> {
        assert_eq!(codes.len(), m * k);
        let mut out = TritTiles::zeroed(None, m, k)?;
        let stride = tile_bytes(k);
        out.map
            .as_mut_slice()
            .par_chunks_mut(stride)
            .zip(codes.par_chunks(TILE_ROWS * k))
            .for_each(|(tile, rows)| pack_tile(rows, k, tile));
        Ok(out)
    }

    /// Trit tiles of a TL1, TL2 or TQ1_0 matrix's file bytes (`m × k`, TL1 and TL2 with their
    /// `tiles`), a row block at a time on every thread. TL2's triples are this form's own codes,
    /// so their magnitudes and signs are moved, not decoded.
    pub fn from_layout(
        layout: Layout,
        bytes: &[u8],
        m: usize,
        k: usize,
        tiles: Option<Tiles>,
    ) -> std::io::Result<TritTiles> {
        TritTiles::from_layout_in(None, layout, bytes, m, k, tiles)
    }

    /// [`TritTiles::from_layout`] into the next free bytes of `arena`, where given.
    pub fn from_layout_in(
        arena: Option<&TileArena>,
        layout: Layout,
        bytes: &[u8],
        m: usize,
        k: usize,
        tiles: Option<Tiles>,
    ) -> std::io::Result<TritTiles> {
        let mut out = TritTiles::zeroed(arena, m, k)?;
        let stride = tile_bytes(k);
        let body = out.map.as_mut_slice();
        match (layout, tiles) {
            (Layout::TL2, Some(t)) if t.rows.is_multiple_of(32) && t.cols.is_multiple_of(GROUP_COLS) => {
                body.par_chunks_mut(t.rows / TILE_ROWS * stride)
                    .enumerate()
                    .for_each(|(i0, dst)| from_tl2_block(bytes, m, k, t, i0, dst));
            }
            (Layout::TL1, Some(t))
                if t.sub_rows.is_multiple_of(TILE_ROWS) && t.rows.is_multiple_of(t.sub_rows) =>
            {
                let quads = tl1_quads();
                body.par_chunks_mut(t.rows / TILE_ROWS * stride).enumerate().for_each(|(i0, dst)| {
                    let mut codes = vec![0i8; t.rows * k];
                    decode_tl1_block(&quads, bytes, k, t, i0, &mut codes);
                    for (tile, rows) in dst.chunks_mut(stride).zip(codes.chunks(TILE_ROWS * k)) {
                        pack_tile(rows, k, tile);
                    }
                });
            }
            (Layout::TQ1_0, None) if k.is_multiple_of(tq1_0::BLOCK) => {
                let row_bytes = k / tq1_0::BLOCK * tq1_0::BLOCK_BYTES;
                let digits = tq1_0_digits();
                body.par_chunks_mut(stride).enumerate().for_each(|(i, tile)| {
                    let rows = (m - i * TILE_ROWS).min(TILE_ROWS);
                    let src = &bytes[i * TILE_ROWS * row_bytes..][..rows * row_bytes];
                    let mut codes = vec![0i8; k];
                    for (r, row) in src.chunks_exact(row_bytes).enumerate() {
                        for (block, out) in
                            row.chunks_exact(tq1_0::BLOCK_BYTES).zip(codes.chunks_exact_mut(tq1_0::BLOCK))
                        {
                            decode_tq1_0(&digits, block, out);
                        }
                        pack_row(&codes, 0, r, tile);
                    }
                });
            }
            _ => {
                panic!("trit tiles come from TL1, TL2 (32-row, 24-column tiles) or TQ1_0 (256-weight blocks)")
            }
        }
        Ok(out)
    }
}

/// Writes row r's codes from column 24·`first_group` on into a zeroed tile (past the codes'
/// end, zeros).
fn pack_row(codes: &[i8], first_group: usize, r: usize, tile: &mut [u8]) {
    let mut groups = codes.chunks_exact(GROUP_COLS);
    for (i, w) in (&mut groups).enumerate() {
        put_group(w.try_into().expect("24 codes"), first_group + i, r, tile);
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut w = [0i8; GROUP_COLS];
        w[..rest.len()].copy_from_slice(rest);
        put_group(&w, first_group + codes.len() / GROUP_COLS, r, tile);
    }
}

/// Group g of row r from its 24 codes.
#[inline]
fn put_group(w: &[i8; GROUP_COLS], g: usize, r: usize, tile: &mut [u8]) {
    let v: [i8; 8] = std::array::from_fn(|j| 9 * w[3 * j] + 3 * w[3 * j + 1] + w[3 * j + 2]);
    let (mags, signs) = group_at(g);
    let bytes: [u8; 4] = std::array::from_fn(|s| v[s].unsigned_abs() | v[4 + s].unsigned_abs() << 4);
    tile[mags + 4 * r..][..4].copy_from_slice(&bytes);
    let negative = |first: usize| (0..4).fold(0u8, |bits, s| bits | ((v[first + s] < 0) as u8) << s);
    // Bits 4r..4r + 4 of each u64: a nibble of byte r/2.
    tile[signs + r / 2] |= negative(0) << (4 * (r % 2));
    tile[signs + 8 + r / 2] |= negative(4) << (4 * (r % 2));
}

/// Writes up to 16 rows of `k` codes into one tile.
fn pack_tile(rows: &[i8], k: usize, tile: &mut [u8]) {
    for (r, row) in rows.chunks_exact(k).enumerate() {
        pack_row(row, 0, r, tile);
    }
}

/// Row block i0 of a TL2 tensor (`formats::tl2`'s planes) into its BM/16 tiles `dst`, a group
/// at a time: the group's four 32-byte runs of the A plane hold its triples' magnitudes (byte
/// p: row PERM(p), triple 2c in the high nibble and 2c + 1 in the low one), the S plane's 16
/// words their signs (word u, bit 15 − 2·tt − h: row 16h + u, triple tt). The K2 tail's pair
/// codes are decoded and packed as triples from column K3 (a multiple of 24) on. It restates the
/// planes' order rather than calling `formats::tl2::walk`, whose per-byte and per-bit callbacks
/// made loading a model several times slower; the repack tests check the two agree.
fn from_tl2_block(bytes: &[u8], m: usize, k: usize, t: Tiles, i0: usize, dst: &mut [u8]) {
    // PERM = [0, 2, 1, 3] swaps two 8-row runs, so it is its own inverse.
    let byte_of_row = |row: usize| [0, 2, 1, 3][row / 8] * 8 + row % 8;
    let (bm, bk) = (t.rows, t.cols);
    let (k3, stride) = (k - k % bk, tile_bytes(k));
    let k2 = k - k3;
    let (a_block, s_block) = (i0 * bm * k3 / 6, m * k3 / 6 + i0 * bm * k3 / 24);
    for t0 in 0..k3 / bk {
        for r0 in 0..bm / 32 {
            let a_run = a_block + t0 * (bm * bk / 6) + r0 * (32 * bk / 6);
            let s_run = s_block + t0 * (bm * bk / 24) + r0 * (32 * bk / 24);
            for g in 0..bk / GROUP_COLS {
                let runs: [&[u8]; 4] = std::array::from_fn(|c| &bytes[a_run + (4 * g + c) * 32..][..32]);
                let words = &bytes[s_run + 32 * g..][..32];
                let (mags, signs) = group_at(t0 * bk / GROUP_COLS + g);
                for h in 0..2 {
                    let tile = &mut dst[(2 * r0 + h) * stride..][..stride];
                    let (mut lo, mut hi) = (0u64, 0u64);
                    for r in 0..TILE_ROWS {
                        let p = byte_of_row(16 * h + r);
                        let nibble = |c: usize, s: usize| {
                            if s.is_multiple_of(2) { runs[c][p] >> 4 } else { runs[c][p] & 15 }
                        };
                        for s in 0..4 {
                            tile[mags + 4 * r + s] = nibble(s / 2, s) | nibble(2 + s / 2, s) << 4;
                        }
                        let word = u16::from_le_bytes([words[2 * r], words[2 * r + 1]]) as u64;
                        for s in 0..4 {
                            lo |= (word >> (15 - 2 * s - h) & 1) << (4 * r + s);
                            hi |= (word >> (7 - 2 * s - h) & 1) << (4 * r + s);
                        }
                    }
                    tile[signs..signs + 8].copy_from_slice(&lo.to_le_bytes());
                    tile[signs + 8..signs + 16].copy_from_slice(&hi.to_le_bytes());
                }
            }
        }
    }
    if k2 > 0 {
        let mut tail = vec![0i8; bm * k2];
        let mut i = m * k3 / 6 + m * k3 / 24 + i0 * bm * k2 / 4;
        for j0 in 0..k2 / 32 {
            for r0 in 0..bm / 32 {
                for j2 in 0..8 {
                    for (p, &byte) in bytes[i..i + 32].iter().enumerate() {
                        let row = r0 * 32 + byte_of_row(p);
                        let c = j0 * 32 + j2 * 4;
                        let (hi, lo) = ((byte >> 4) as i8, (byte & 15) as i8);
                        tail[row * k2 + c..][..4].copy_from_slice(&[
                            hi / 3 - 1,
                            hi % 3 - 1,
                            lo / 3 - 1,
                            lo % 3 - 1,
                        ]);
                    }
                    i += 32;
                }
            }
        }
        for (row, codes) in tail.chunks_exact(k2).enumerate() {
            let tile = &mut dst[row / TILE_ROWS * stride..][..stride];
            pack_row(codes, k3 / GROUP_COLS, row % TILE_ROWS, tile);
        }
    }
}

/// The four codes of every TL1 byte: pair indices 3·w0 + w1 + 4 in the high nibble (columns c,
/// c + 1) and the low one (c + 2, c + 3). Indices above 8 decode as some pair; the loader has
/// rejected them already (`formats::tl1::validate`).
fn tl1_quads() -> Vec<[i8; 4]> {
    (0..=255u8)
        .map(|b| {
            let (hi, lo) = ((b >> 4) as i8, (b & 15) as i8);
            [hi / 3 - 1, hi % 3 - 1, lo / 3 - 1, lo % 3 - 1]
        })
        .collect()
}

/// Row block i0 of a TL1 tensor (`formats::tl1`: each byte four consecutive weights of one row)
/// into `BM × k` codes, a byte at a time by table.
fn decode_tl1_block(quads: &[[i8; 4]], bytes: &[u8], k: usize, t: Tiles, i0: usize, out: &mut [i8]) {
    let base = i0 * t.rows;
    tl1::for_each_byte_of_block(k, t, i0, &mut |i, row, col| {
        out[(row - base) * k + col..][..4].copy_from_slice(&quads[bytes[i] as usize]);
    });
}

/// The five codes of every TQ1_0 byte, digit n at index n (`formats::tq1_0::decode_block`).
fn tq1_0_digits() -> Vec<[i8; 5]> {
    (0..256u16)
        .map(|b| {
            let mut pow = 1u16;
            std::array::from_fn(|_| {
                let q = (b * pow) & 0xFF;
                pow *= 3;
                ((q * 3) >> 8) as i8 - 1
            })
        })
        .collect()
}

/// One TQ1_0 block's 256 codes by table, in the format's own order (`tq1_0::groups`).
fn decode_tq1_0(digits: &[[i8; 5]], block: &[u8], out: &mut [i8]) {
    for (byte, first, stride, count) in tq1_0::groups() {
        for (n, &w) in digits[block[byte] as usize][..count].iter().enumerate() {
            out[first + stride * n] = w;
        }
    }
}

/// Balanced-ternary digits (w0, w1, w2) of v = 9·w0 + 3·w1 + w2, −13 ≤ v ≤ 13.
const fn digits(v: i32) -> [i32; 3] {
    let w2 = (v + 1).rem_euclid(3) - 1;
    let w1 = ((v - w2) / 3 + 1).rem_euclid(3) - 1;
    [(v - w2 - 3 * w1) / 9, w1, w2]
}

/// Writes one token's `k` activations in the kernels' order (`arranged_len(k)` bytes).
pub fn arrange(act: &[i8], out: &mut [u8]) {
    let k = act.len();
    assert_eq!(out.len(), arranged_len(k));
    for (g, dst) in out.chunks_exact_mut(GROUP_COLS).enumerate() {
        for h in 0..2 {
            for t in 0..3 {
                for s in 0..4 {
                    let c = GROUP_COLS * g + 12 * h + 3 * s + t;
                    dst[4 * (3 * h + t) + s] = act.get(c).copied().unwrap_or(0) as u8;
                }
            }
        }
    }
}

/// `out[(r − r0)·tokens + t] = Σ_k w[r,k]·q[t,k]` for rows `r0..r1` (`r0` a multiple of 16,
/// `r1` too or the last row): `acts` the tokens' activations in [`arrange`]'s order, `sums` their
/// Σq.
pub fn gemm(isa: Isa, w: &TritTiles, r0: usize, r1: usize, acts: &[u8], sums: &[i32], out: &mut [i32]) {
    gemm_decoding(isa, true, w, r0, r1, acts, sums, out);
}

/// [`gemm`], with VBMI's one-token decoding only if `vbmi` (and the CPU has it): the tests run
/// both decodings.
#[allow(clippy::too_many_arguments)]
fn gemm_decoding(
    isa: Isa,
    vbmi: bool,
    w: &TritTiles,
    r0: usize,
    r1: usize,
    acts: &[u8],
    sums: &[i32],
    out: &mut [i32],
) {
    let (k, tokens) = (w.cols, sums.len());
    let per_token = arranged_len(k);
    assert!(r0.is_multiple_of(TILE_ROWS) && r0 <= r1 && r1 <= w.rows);
    assert!(r1.is_multiple_of(TILE_ROWS) || r1 == w.rows);
    assert_eq!((acts.len(), out.len()), (tokens * per_token, (r1 - r0) * tokens));
    if tokens == 0 {
        return;
    }
    let stride = tile_bytes(k);
    let tile = |i: usize| &w.bytes()[i * stride..][..stride];
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && runs(isa) {
        super::tile_products(r0, r1, sums, 8, out, |i, tok, n| {
            let acts = &acts[tok * per_token..(tok + n) * per_token];
            // SAFETY: AVX-512 VNNI was detected (runs); the tile holds `groups(k)` groups and
            // each token `per_token` arranged activations.
            unsafe { x86::tile(tile(i), groups(k), acts, per_token, n, vbmi) }
        });
        return;
    }
    // Only x86-64 has the SIMD tiles and a VBMI decoding to choose.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (isa, vbmi);
    for (i, o) in (r0 / TILE_ROWS..r1.div_ceil(TILE_ROWS)).zip(out.chunks_mut(TILE_ROWS * tokens)) {
        for (t, act) in acts.chunks_exact(per_token).enumerate() {
            for r in 0..o.len() / tokens {
                o[r * tokens + t] = row_scalar(tile(i), k, r, act);
            }
        }
    }
}

/// Σ w·q of row `r` of a tile, decoding each stored triple: the reference for the SIMD tile.
fn row_scalar(tile: &[u8], k: usize, r: usize, act: &[u8]) -> i32 {
    let mut sum = 0;
    for g in 0..groups(k) {
        let (mags, signs) = group_at(g);
        for slot in 0..8 {
            let (s, half) = (slot % 4, slot / 4);
            let mag = (tile[mags + 4 * r + s] >> (4 * half)) & 15;
            let bit = 4 * r + s;
            let negative = tile[signs + 8 * half + bit / 8] >> (bit % 8) & 1 == 1;
            // 14 and 15 are no triple: weights 0, as the SIMD table has them.
            let v = if mag > 13 {
                0
            } else if negative {
                -(mag as i32)
            } else {
                mag as i32
            };
            for (t, w) in digits(v).into_iter().enumerate() {
                sum += w * act[GROUP_COLS * g + 4 * (3 * half + t) + s] as i8 as i32;
            }
        }
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK_BYTES, BLOCK_GROUPS, digits};
    use std::arch::x86_64::*;

    /// For digit t, the code w_t + 1 of |v| = 0..=13 (a negative v's codes are 2 minus these);
    /// 14 and 15 as weights 0.
    const fn codes(t: usize) -> [u8; 16] {
        let mut table = [1u8; 16];
        let mut mag = 0;
        while mag < 14 {
            table[mag] = (digits(mag as i32)[t] + 1) as u8;
            mag += 1;
        }
        table
    }

    const CODES: [[u8; 16]; 3] = [codes(0), codes(1), codes(2)];

    /// For VBMI's `vpermb`: entries 0..16 digit t's codes of magnitude m, 16..32 those of −m
    /// (2 − code); the rest unused.
    const fn signed_codes(t: usize) -> [u8; 64] {
        let mut both = [0u8; 64];
        let mut m = 0;
        while m < 16 {
            both[m] = CODES[t][m];
            both[16 + m] = 2 - CODES[t][m];
            m += 1;
        }
        both
    }

    const SIGNED_CODES: [[u8; 64]; 3] = [signed_codes(0), signed_codes(1), signed_codes(2)];

    /// How far ahead of the block being read its successors are asked for: weights stream from
    /// memory, one tile after another.
    const PREFETCH: usize = 8 * BLOCK_BYTES;

    /// Σ c·q (codes c = w + 1) for the 16 rows of one tile against `n` tokens (1..=8) of
    /// arranged activations, `per_token` bytes apart: lane r of slot j is row r, token j.
    ///
    /// # Safety
    /// AVX-512F/BW and VNNI; `tile` holds `groups` groups and their signs, `acts` n tokens.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(
        tile: &[u8],
        groups: usize,
        acts: &[u8],
        per_token: usize,
        n: usize,
        vbmi: bool,
    ) -> [[i32; 16]; 8] {
        assert!(groups.is_multiple_of(BLOCK_GROUPS) && tile.len() >= groups / BLOCK_GROUPS * BLOCK_BYTES);
        assert!((1..=8).contains(&n) && acts.len() >= n * per_token && per_token >= groups * 24);
        let mut out = [[0i32; 16]; 8];
        let vbmi = vbmi && n == 1 && has_vbmi();
        let sums: [__m512i; 8] = with_pass_len!(n, N => {
            // SAFETY: the extents asserted above; the features enabled here, VBMI's detected.
            let got = unsafe {
                if vbmi {
                    tile_pass_vbmi::<N>(tile.as_ptr(), groups, acts.as_ptr(), per_token)
                } else {
                    tile_pass::<N>(tile.as_ptr(), groups, acts.as_ptr(), per_token)
                }
            };
            std::array::from_fn(|j| if j < N { got[j] } else { _mm512_setzero_si512() })
        });
        for (o, v) in out.iter_mut().zip(sums) {
            // SAFETY: 16 i32 into a 16-i32 array.
            unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, v) };
        }
        out
    }

    /// Whether this CPU has AVX-512 VBMI's byte permute (`TERN_VBMI=off`: as if not, to compare).
    fn has_vbmi() -> bool {
        static YES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *YES.get_or_init(|| {
            is_x86_feature_detected!("avx512vbmi") && std::env::var("TERN_VBMI").as_deref() != Ok("off")
        })
    }

    /// [`tile_pass`] with each digit's codes from one `vpermb` of a 32-entry table — codes of
    /// the positive magnitudes, then of the negative ones — indexed by the magnitude plus 16
    /// where the sign bit is set: one addition per nibble vector in place of a masked subtract
    /// per digit, four fewer operations per group of 384 weights, which bound a token's product
    /// (docs/performance-notes.md, "Trit tiles").
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    unsafe fn tile_pass_vbmi<const N: usize>(
        tile: *const u8,
        groups: usize,
        acts: *const u8,
        per_token: usize,
    ) -> [__m512i; N] {
        // SAFETY: the caller's extents; the features enabled here.
        unsafe { tile_pass_with::<N, true>(tile, groups, acts, per_token) }
    }

    /// The tile against N tokens: the group's six code vectors decoded once, then six
    /// `vpdpbusd` per token. Accumulators by half (and, for one token, by digit too), so no chain
    /// of dependent `vpdpbusd` sets the pace.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_pass<const N: usize>(
        tile: *const u8,
        groups: usize,
        acts: *const u8,
        per_token: usize,
    ) -> [__m512i; N] {
        // SAFETY: the caller's extents; the features enabled here.
        unsafe { tile_pass_with::<N, false>(tile, groups, acts, per_token) }
    }

    /// `v + 16` in the bytes whose bit of `negative` is set, as one masked `vpaddb`: written
    /// with `asm!` because LLVM turns the intrinsic on bytes below 16 into an OR and a masked
    /// move, two operations.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn with_sign(v: __m512i, negative: u64, sixteen: __m512i) -> __m512i {
        let mut out = v;
        // SAFETY: one AVX-512BW instruction on registers; the caller enabled AVX-512BW.
        unsafe {
            std::arch::asm!(
                "vpaddb {out}{{{k}}}, {v}, {s}",
                out = inout(zmm_reg) out,
                k = in(kreg) negative,
                v = in(zmm_reg) v,
                s = in(zmm_reg) sixteen,
                options(pure, nomem, nostack),
            );
        }
        out
    }

    /// The body of [`tile_pass`] (`VBMI`: [`tile_pass_vbmi`]'s decoding), inlined into each.
    #[inline(always)]
    unsafe fn tile_pass_with<const N: usize, const VBMI: bool>(
        tile: *const u8,
        groups: usize,
        acts: *const u8,
        per_token: usize,
    ) -> [__m512i; N] {
        const ACC: usize = 6;
        // SAFETY (every load below): the caller guarantees `groups` groups of magnitudes and
        // signs at `tile` and N tokens of `per_token` arranged bytes at `acts`.
        unsafe {
            let table =
                |t: usize| _mm512_broadcast_i32x4(_mm_loadu_si128(CODES[t].as_ptr() as *const __m128i));
            let tables = [table(0), table(1), table(2)];
            let signed = |t: usize| _mm512_loadu_si512(SIGNED_CODES[t].as_ptr() as *const __m512i);
            let signed_tables = if VBMI { [signed(0), signed(1), signed(2)] } else { tables };
            let (nib, two, sixteen) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(2), _mm512_set1_epi8(16));
            let mut acc = [[_mm512_setzero_si512(); ACC]; N];
            for g in 0..groups {
                let (mags, signs) = super::group_at(g);
                if g % BLOCK_GROUPS == 0 {
                    for line in 0..5 {
                        _mm_prefetch::<_MM_HINT_T0>(
                            tile.wrapping_add(mags + PREFETCH + 64 * line) as *const i8
                        );
                    }
                }
                let x = _mm512_loadu_si512(tile.add(mags) as *const __m512i);
                let s = tile.add(signs) as *const u64;
                let (s_lo, s_hi) = (s.read_unaligned(), s.add(1).read_unaligned());
                let lo = _mm512_and_si512(x, nib);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(x), nib);
                let (lo, hi) = if VBMI {
                    (with_sign(lo, s_lo, sixteen), with_sign(hi, s_hi, sixteen))
                } else {
                    (lo, hi)
                };
                let code = |idx: __m512i, t: usize, negative: __mmask64| {
                    if VBMI {
                        _mm512_permutexvar_epi8(idx, signed_tables[t])
                    } else {
                        let c = _mm512_shuffle_epi8(tables[t], idx);
                        _mm512_mask_sub_epi8(c, negative, two, c)
                    }
                };
                let codes = [
                    code(lo, 0, s_lo),
                    code(lo, 1, s_lo),
                    code(lo, 2, s_lo),
                    code(hi, 0, s_hi),
                    code(hi, 1, s_hi),
                    code(hi, 2, s_hi),
                ];
                for (n, acc) in acc.iter_mut().enumerate() {
                    let a = acts.add(n * per_token + 24 * g) as *const i32;
                    for (j, &c) in codes.iter().enumerate() {
                        let q = _mm512_set1_epi32(a.add(j).read_unaligned());
                        let slot = if N == 1 { j } else { j / 3 };
                        acc[slot] = _mm512_dpbusd_epi32(acc[slot], c, q);
                    }
                }
            }
            std::array::from_fn(|n| {
                let a = &acc[n];
                let v = _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
                _mm512_add_epi32(v, _mm512_add_epi32(a[4], a[5]))
            })
        }
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

    fn naive(codes: &[i8], acts: &[i8], m: usize, k: usize, r0: usize, r1: usize) -> Vec<i32> {
        let tokens = acts.len() / k;
        let _ = m;
        (r0..r1)
            .flat_map(|r| {
                let row = &codes[r * k..][..k];
                (0..tokens).map(move |t| {
                    row.iter().zip(&acts[t * k..][..k]).map(|(&w, &q)| w as i32 * q as i32).sum()
                })
            })
            .collect()
    }

    fn arranged(acts: &[i8], k: usize) -> (Vec<u8>, Vec<i32>) {
        let per = arranged_len(k);
        let mut out = vec![0u8; acts.len() / k * per];
        for (a, o) in acts.chunks_exact(k).zip(out.chunks_exact_mut(per)) {
            arrange(a, o);
        }
        (out, acts.chunks_exact(k).map(|a| a.iter().map(|&q| q as i32).sum()).collect())
    }

    /// The scalar reference and every instruction set equal the naive product of the codes, on
    /// shapes with padded rows and columns and for 1 to 17 tokens (passes of 8 and partial
    /// ones), over the whole matrix and a range of tiles.
    #[test]
    fn every_path_computes_the_exact_product() {
        for (m, k) in [(16usize, 24usize), (32, 256), (67, 512), (5, 40), (48, 2560), (64, 6912), (20, 1000)]
        {
            let mut r = stream(m as u64 * 1009 + k as u64);
            let codes: Vec<i8> = (0..m * k).map(|_| (r() % 3) as i8 - 1).collect();
            let w = TritTiles::pack(&codes, m, k).unwrap();
            for tokens in [1usize, 2, 3, 8, 9, 17] {
                let acts: Vec<i8> =
                    (0..tokens * k).map(|i| if i % 13 == 0 { -128 } else { r() as i8 }).collect();
                let (arr, sums) = arranged(&acts, k);
                let want = naive(&codes, &acts, m, k, 0, m);
                for isa in [Isa::Scalar].into_iter().chain(crate::cpu::available()) {
                    // With and without VBMI's decoding (where the CPU has it).
                    for vbmi in [false, true] {
                        let mut out = vec![0; m * tokens];
                        gemm_decoding(isa, vbmi, &w, 0, m, &arr, &sums, &mut out);
                        assert_eq!(out, want, "{m}x{k}, {tokens} tokens, {}, vbmi {vbmi}", isa.name());
                    }
                    if m > TILE_ROWS {
                        let mut part = vec![0; (m - TILE_ROWS) * tokens];
                        gemm(isa, &w, TILE_ROWS, m, &arr, &sums, &mut part);
                        assert_eq!(part, want[TILE_ROWS * tokens..], "{m}x{k} from row 16, {}", isa.name());
                    }
                }
            }
        }
    }

    /// Every weight +1 (or −1) against activations −128 at the widest row the models have: the
    /// 32-bit sums at their largest, on every path.
    #[test]
    fn sums_at_the_extremes() {
        let (m, k) = (16usize, 6912usize);
        let acts = vec![-128i8; k];
        let (arr, sums) = arranged(&acts, k);
        for sign in [1i8, -1] {
            let w = TritTiles::pack(&vec![sign; m * k], m, k).unwrap();
            for isa in [Isa::Scalar].into_iter().chain(crate::cpu::available()) {
                for vbmi in [false, true] {
                    let mut out = vec![0; m];
                    gemm_decoding(isa, vbmi, &w, 0, m, &arr, &sums, &mut out);
                    let want = -128 * sign as i32 * k as i32;
                    assert!(out.iter().all(|&v| v == want), "{sign} on {}, vbmi {vbmi}", isa.name());
                }
            }
        }
    }

    /// Repacking a TL1, TL2 or TQ1_0 file's bytes gives the tiles of its codes: TL1 with the
    /// rule's tiles and bitnet.cpp's 64-row ones, TL2 with the rule's tiles and with K blocks that
    /// leave a pair-coded tail, TQ1_0 with a partial last tile.
    #[test]
    fn tiles_from_layouts_equal_tiles_from_codes() {
        let mut tails = 0;
        for (m, k) in [(64usize, 512usize), (32, 2560), (96, 768), (67, 512), (128, 512)] {
            let mut r = stream(k as u64 + m as u64);
            let codes: Vec<i8> = (0..m * k).map(|_| (r() % 3) as i8 - 1).collect();
            let want = TritTiles::pack(&codes, m, k).unwrap();
            let mut cases: Vec<(Layout, Option<Tiles>)> = Vec::new();
            for layout in [Layout::TL1, Layout::TL2, Layout::TQ1_0] {
                if let Some(tiles) = layout.fit(m, k) {
                    cases.push((layout, tiles));
                }
            }
            // Other K blocks (pair-coded tails) and row blocks of several 32-row chunks.
            for (rows, cols) in [(32, 192), (64, 192), (128, 96), (64, 24)] {
                let t = Tiles { rows, cols, sub_rows: 32 };
                if tern_formats::tiles::check(Layout::TL2, m, k, t).is_ok() {
                    tails += usize::from(k % cols != 0 && rows > 32);
                    cases.push((Layout::TL2, Some(t)));
                }
            }
            // TL1 with 64-row sub-blocks (bitnet.cpp's presets).
            let t = Tiles { rows: 64, cols: 256, sub_rows: 64 };
            if tern_formats::tiles::check(Layout::TL1, m, k, t).is_ok() {
                cases.push((Layout::TL1, Some(t)));
            }
            // 67 rows fit no TL tiles: TQ1_0 alone there.
            assert!(cases.len() >= if m % 32 == 0 { 3 } else { 1 }, "{m}x{k}: {cases:?}");
            for (layout, tiles) in cases {
                let bytes = layout.pack(&codes, m, k, 1.0, tiles);
                let got = TritTiles::from_layout(layout, &bytes, m, k, tiles).unwrap();
                assert!(got.bytes() == want.bytes(), "{} {m}x{k} {tiles:?}", layout.name());
            }
        }
        assert!(tails >= 2, "TL2 row blocks of several chunks with a pair tail: {tails} cases");
    }
}
