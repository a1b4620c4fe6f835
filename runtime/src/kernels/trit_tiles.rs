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
//! The decoding kernels ([`gemm`]) read the tokens' activations in the matching order
//! ([`arrange`]): for group g, half h and digit t, the four bytes `a[24g + 12h + 3s + t]`,
//! s = 0..4. They compute Σ c·q with the codes c = w + 1 and the caller's Σq subtracted, as the
//! 2-bit kernels do. One token, where the CPU has VBMI, is instead looked up ([`gemv_sums`]): per
//! input, each triple of activations' sums for the 14 magnitudes ([`triple_sums`]); per group, a
//! `vpermb` by the stored magnitudes into them and `vpdpbusd` with the signs, with no decoding.
//!
//! Variants: scalar (the references, one per product, reading each stored triple), AVX-512 VNNI
//! (with VBMI for the lookup); exact, tested against each other and against the naive product.

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
    /// Per row (padded to whole tiles), `SUMS_OFFSET · Σ σ` over its stored triples (σ = ±1 by
    /// sign bit): what the one-token lookup product ([`gemv_sums`]) adds by reading offset sums.
    bias: Vec<i32>,
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
        let map = ArenaBytes::take_from(arena, tiles_bytes(rows, cols))?;
        Ok(TritTiles { rows, cols, map, bias: Vec::new() })
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
        out.bias = biases(out.bytes(), k);
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
        out.bias = biases(out.bytes(), k);
        Ok(out)
    }

    /// Row `r`'s `cols` codes (each −1, 0 or 1), decoded from its tile.
    pub fn row_codes(&self, r: usize, out: &mut [i8]) {
        // Index: sign bit · 16 + magnitude; 14 and 15 are no triple: weights 0, as every kernel
        // reads them.
        const TRIPLES: [[i8; 3]; 32] = {
            let mut all = [[0i8; 3]; 32];
            let mut i = 0;
            while i < 32 {
                let mag = (i % 16) as i32;
                if mag < 14 {
                    let d = digits(if i >= 16 { -mag } else { mag });
                    all[i] = [d[0] as i8, d[1] as i8, d[2] as i8];
                }
                i += 1;
            }
            all
        };
        let k = self.cols;
        assert!(r < self.rows && out.len() == k);
        let tile = &self.bytes()[r / TILE_ROWS * tile_bytes(k)..][..tile_bytes(k)];
        let r = r % TILE_ROWS;
        // A group's 24 codes: per slot s, the low nibble's triple (columns 3s..) and the high
        // nibble's (12 + 3s..), each signed by its bit.
        let group = |g: usize, out: &mut [i8; GROUP_COLS]| {
            let (mags, signs) = group_at(g);
            let sign = |half: usize| (tile[signs + 8 * half + r / 2] >> (4 * (r % 2))) as usize;
            let (low, high) = (sign(0), sign(1));
            for (s, &m) in tile[mags + 4 * r..][..4].iter().enumerate() {
                out[3 * s..3 * s + 3].copy_from_slice(&TRIPLES[16 * (low >> s & 1) + (m & 15) as usize]);
                out[12 + 3 * s..15 + 3 * s]
                    .copy_from_slice(&TRIPLES[16 * (high >> s & 1) + (m >> 4) as usize]);
            }
        };
        let mut whole = out.chunks_exact_mut(GROUP_COLS);
        for (g, out) in (&mut whole).enumerate() {
            group(g, out.try_into().expect("24 codes"));
        }
        let rest = whole.into_remainder();
        if !rest.is_empty() {
            let mut last = [0i8; GROUP_COLS];
            group(k / GROUP_COLS, &mut last);
            rest.copy_from_slice(&last[..rest.len()]);
        }
    }
}

/// `SUMS_OFFSET · Σ σ` for every row of the tiles `bytes` of `k` columns: σ = −1 for each triple
/// whose sign bit is set, +1 for every other (padding included).
fn biases(bytes: &[u8], k: usize) -> Vec<i32> {
    let slots = 8 * groups(k) as i32;
    bytes
        .par_chunks_exact(tile_bytes(k))
        .flat_map_iter(|tile| {
            let mut negative = [0i32; TILE_ROWS];
            for g in 0..groups(k) {
                let (_, signs) = group_at(g);
                for half in 0..2 {
                    let bits = u64::from_le_bytes(tile[signs + 8 * half..][..8].try_into().expect("8 bytes"));
                    for (r, n) in negative.iter_mut().enumerate() {
                        *n += (bits >> (4 * r) & 15).count_ones() as i32;
                    }
                }
            }
            negative.map(|n| SUMS_OFFSET * (slots - 2 * n))
        })
        .collect()
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
pub(crate) fn tl1_quads() -> Vec<[i8; 4]> {
    (0..=255u8)
        .map(|b| {
            let (hi, lo) = ((b >> 4) as i8, (b & 15) as i8);
            [hi / 3 - 1, hi % 3 - 1, lo / 3 - 1, lo % 3 - 1]
        })
        .collect()
}

/// Row block i0 of a TL1 tensor (`formats::tl1`: each byte four consecutive weights of one row)
/// into `BM × k` codes, a byte at a time by table.
pub(crate) fn decode_tl1_block(
    quads: &[[i8; 4]],
    bytes: &[u8],
    k: usize,
    t: Tiles,
    i0: usize,
    out: &mut [i8],
) {
    let base = i0 * t.rows;
    tl1::for_each_byte_of_block(k, t, i0, &mut |i, row, col| {
        out[(row - base) * k + col..][..4].copy_from_slice(&quads[bytes[i] as usize]);
    });
}

/// The five codes of every TQ1_0 byte, digit n at index n (`formats::tq1_0::decode_block`).
pub(crate) fn tq1_0_digits() -> Vec<[i8; 5]> {
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
pub(crate) fn decode_tq1_0(digits: &[[i8; 5]], block: &[u8], out: &mut [i8]) {
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

/// What every entry of the triple-sums tables carries on top of its sum, so that entries are
/// unsigned (|Σ| ≤ 3·128) and split into a low byte and a high byte of at most 3.
const SUMS_OFFSET: i32 = 384;
/// Bytes of one group's triple-sums tables: per half, 64 low bytes then 64 high bytes.
const SUMS_GROUP_BYTES: usize = 256;
/// Tiles read together by the lookup product: they share each group's table loads, which
/// otherwise outnumber the weights' three to one.
#[cfg(target_arch = "x86_64")]
const SUMS_TILES: usize = 4;

/// Bytes of one token's triple-sums tables ([`triple_sums`]).
pub fn sums_len(k: usize) -> usize {
    groups(k) * SUMS_GROUP_BYTES
}

/// Whether one token's products on `isa` read triple-sums tables ([`gemv_sums`]): AVX-512 VNNI
/// with VBMI, whose 64-entry byte lookup holds a group's four tables of 16.
/// `TERN_TRIT_SUMS=off` keeps one token on decoded codes, to compare.
pub fn runs_on_sums(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let off = *OFF.get_or_init(|| std::env::var("TERN_TRIT_SUMS").as_deref() == Ok("off"));
        runs(isa) && x86::has_vbmi() && !off
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// One token's triple-sums tables: for group g, half h and slot s (the triple of columns
/// 24g + 12h + 3s..), entry 16s + |v| is `SUMS_OFFSET` + Σ_t w_t·a[24g + 12h + 3s + t] for the
/// digits (w0, w1, w2) of |v| (0 for 14 and 15), its low byte at `256g + 128h + 16s + |v|`
/// and its high byte 64 further. A triple's product is then one lookup by its stored
/// magnitude, times its sign.
pub fn triple_sums(act: &[i8], out: &mut [u8]) {
    assert_eq!(out.len(), sums_len(act.len()));
    #[cfg(target_arch = "x86_64")]
    if x86::has_vbmi() {
        // SAFETY: AVX-512F/BW/VL and VBMI detected; `out` holds every group's tables.
        unsafe { x86::triple_sums(act, out) };
        return;
    }
    triple_sums_scalar(act, out);
}

/// [`triple_sums`] one entry at a time: the reference for the SIMD build.
fn triple_sums_scalar(act: &[i8], out: &mut [u8]) {
    for (g, dst) in out.chunks_exact_mut(SUMS_GROUP_BYTES).enumerate() {
        for h in 0..2 {
            for s in 0..4 {
                for m in 0..16 {
                    let first = GROUP_COLS * g + 12 * h + 3 * s;
                    let sum: i32 = if m < 14 {
                        let w = digits(m as i32);
                        (0..3).map(|t| w[t] * act.get(first + t).copied().unwrap_or(0) as i32).sum()
                    } else {
                        0
                    };
                    let v = SUMS_OFFSET + sum;
                    dst[128 * h + 16 * s + m] = v as u8;
                    dst[128 * h + 64 + 16 * s + m] = (v >> 8) as u8;
                }
            }
        }
    }
}

/// `out[r − r0] = Σ_k w[r,k]·q[k]` for rows `r0..r1` (as in [`gemm`]) of one token, from its
/// [`triple_sums`] `table`: per 384 weights four lookups and four `vpdpbusd` with the signs,
/// against six of each for decoded codes.
pub fn gemv_sums(isa: Isa, w: &TritTiles, r0: usize, r1: usize, table: &[u8], out: &mut [i32]) {
    let k = w.cols;
    assert!(r0.is_multiple_of(TILE_ROWS) && r0 <= r1 && r1 <= w.rows);
    assert!(r1.is_multiple_of(TILE_ROWS) || r1 == w.rows);
    assert_eq!((table.len(), out.len()), (sums_len(k), r1 - r0));
    let stride = tile_bytes(k);
    let tile = |i: usize| &w.bytes()[i * stride..][..stride];
    #[cfg(target_arch = "x86_64")]
    if runs_on_sums(isa) {
        let (bytes, end) = (w.bytes(), r1.div_ceil(TILE_ROWS));
        let mut i = r0 / TILE_ROWS;
        while i < end {
            let n = if end - i >= SUMS_TILES { SUMS_TILES } else { 1 };
            let (tiles, after) =
                (&bytes[i * stride..], bytes[((i + n) * stride).min(bytes.len())..].as_ptr());
            let mut put = |j: usize, lanes: [i32; TILE_ROWS]| {
                let row = (i + j) * TILE_ROWS;
                let o = &mut out[row - r0..(row + TILE_ROWS).min(r1) - r0];
                for ((o, v), b) in o.iter_mut().zip(lanes).zip(&w.bias[row..]) {
                    *o = v - b;
                }
            };
            // SAFETY: AVX-512 VNNI and VBMI detected (runs_on_sums); from `tiles` on, n whole
            // tiles of `groups(k)` groups, and the table as many groups' tables.
            if n == SUMS_TILES {
                let got = unsafe { x86::tiles_sums::<SUMS_TILES>(tiles, stride, groups(k), table, after) };
                got.into_iter().enumerate().for_each(|(j, lanes)| put(j, lanes));
            } else {
                let [lanes] = unsafe { x86::tiles_sums::<1>(tiles, stride, groups(k), table, after) };
                put(0, lanes);
            }
            i += n;
        }
        return;
    }
    let _ = isa;
    for (i, o) in (r0 / TILE_ROWS..r1.div_ceil(TILE_ROWS)).zip(out.chunks_mut(TILE_ROWS)) {
        let bias = &w.bias[i * TILE_ROWS..][..TILE_ROWS];
        for (r, (o, b)) in o.iter_mut().zip(bias).enumerate() {
            *o = row_sums_scalar(tile(i), k, r, table) - b;
        }
    }
}

/// Σ σ·(table entry) of row `r` of a tile: the reference for the SIMD lookup pass.
fn row_sums_scalar(tile: &[u8], k: usize, r: usize, table: &[u8]) -> i32 {
    let mut sum = 0;
    for g in 0..groups(k) {
        let (mags, signs) = group_at(g);
        for slot in 0..8 {
            let (s, half) = (slot % 4, slot / 4);
            let mag = (tile[mags + 4 * r + s] >> (4 * half)) as usize & 15;
            let bit = 4 * r + s;
            let negative = tile[signs + 8 * half + bit / 8] >> (bit % 8) & 1 == 1;
            let at = SUMS_GROUP_BYTES * g + 128 * half + 16 * s + mag;
            let v = table[at] as i32 + 256 * table[at + 64] as i32;
            sum += if negative { -v } else { v };
        }
    }
    sum
}

/// `out[(r − r0)·tokens + t] = Σ_k w[r,k]·q[t,k]` for rows `r0..r1` (`r0` a multiple of 16,
/// `r1` too or the last row): `acts` the tokens' activations in [`arrange`]'s order, `sums` their
/// Σq.
pub fn gemm(isa: Isa, w: &TritTiles, r0: usize, r1: usize, acts: &[u8], sums: &[i32], out: &mut [i32]) {
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
            unsafe { x86::tile(tile(i), groups(k), acts, per_token, n) }
        });
        return;
    }
    // Only x86-64 has the SIMD tiles.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
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

    /// How far ahead of the block being read its successors are asked for: weights stream from
    /// memory, one tile after another.
    const PREFETCH: usize = 8 * BLOCK_BYTES;
    /// The same for the lookup product, whose weights are asked for into L2 only, further
    /// ahead: brought into L1 they pushed out the tables it reads every group.
    const SUMS_PREFETCH: usize = 32 * BLOCK_BYTES;

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
    ) -> [[i32; 16]; 8] {
        assert!(groups.is_multiple_of(BLOCK_GROUPS) && tile.len() >= groups / BLOCK_GROUPS * BLOCK_BYTES);
        assert!((1..=8).contains(&n) && acts.len() >= n * per_token && per_token >= groups * 24);
        let mut out = [[0i32; 16]; 8];
        let sums: [__m512i; 8] = with_pass_len!(n, N => {
            // SAFETY: the extents asserted above; the features enabled here.
            let got = unsafe { tile_pass::<N>(tile.as_ptr(), groups, acts.as_ptr(), per_token) };
            std::array::from_fn(|j| if j < N { got[j] } else { _mm512_setzero_si512() })
        });
        for (o, v) in out.iter_mut().zip(sums) {
            // SAFETY: 16 i32 into a 16-i32 array.
            unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, v) };
        }
        out
    }

    /// Whether this CPU has AVX-512 VBMI's byte permutes, with the F/BW/VL/VNNI the kernels
    /// using them also need.
    pub(super) fn has_vbmi() -> bool {
        static YES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *YES.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vbmi")
        })
    }

    /// For the triple-sums build, vector j (half j / 2, slots 2·(j % 2) and the next) and digit
    /// t: for each entry e, the lane of (activations, their negations) that digit t of e's
    /// magnitude adds: activation 12·half + 3·slot + t where the digit is 1, its negation
    /// (32 lanes on) where it is −1, and lane 31 (always 0: a group has 24 activations) where
    /// it is 0, as for magnitudes 14 and 15.
    const fn sums_index(j: usize, t: usize) -> [u16; 32] {
        let mut idx = [0u16; 32];
        let mut e = 0;
        while e < 32 {
            let m = (e % 16) as i32;
            let lane = (12 * (j / 2) + 3 * (2 * (j % 2) + e / 16) + t) as u16;
            let digit = if m < 14 { digits(m)[t] } else { 0 };
            idx[e] = match digit {
                1 => lane,
                -1 => 32 + lane,
                _ => 31,
            };
            e += 1;
        }
        idx
    }

    const SUMS_INDEX: [[[u16; 32]; 3]; 4] = {
        let mut all = [[[0u16; 32]; 3]; 4];
        let mut j = 0;
        while j < 4 {
            let mut t = 0;
            while t < 3 {
                all[j][t] = sums_index(j, t);
                t += 1;
            }
            j += 1;
        }
        all
    };

    /// Byte indices of the low (`odd` false) or high bytes of two vectors of 32 u16, in order.
    const fn byte_picks(odd: bool) -> [u8; 64] {
        let mut idx = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            idx[i] = (2 * i + odd as usize) as u8;
            i += 1;
        }
        idx
    }
    const LOW_BYTES: [u8; 64] = byte_picks(false);
    const HIGH_BYTES: [u8; 64] = byte_picks(true);

    /// [`super::triple_sums`] a group at a time: its 24 activations widened to 16 bits and
    /// negated, each digit's term (the activation, its negation or 0) moved under its entries
    /// by one `vpermt2w` and added, and the 16-bit entries split into their byte tables by
    /// `vpermt2b`.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and VBMI; `out.len() == sums_len(act.len())`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub(super) unsafe fn triple_sums(act: &[i8], out: &mut [u8]) {
        let k = act.len();
        assert_eq!(out.len(), super::sums_len(k));
        // SAFETY (every load and store below): constant tables of their vectors' size; the
        // masked load reads only act's bytes; each group's 256 bytes lie within `out`.
        unsafe {
            let load16 = |v: &[u16; 32]| _mm512_loadu_si512(v.as_ptr() as *const __m512i);
            let index: [[__m512i; 3]; 4] =
                std::array::from_fn(|j| std::array::from_fn(|t| load16(&SUMS_INDEX[j][t])));
            let low = _mm512_loadu_si512(LOW_BYTES.as_ptr() as *const __m512i);
            let high = _mm512_loadu_si512(HIGH_BYTES.as_ptr() as *const __m512i);
            let offset = _mm512_set1_epi16(super::SUMS_OFFSET as i16);
            for (g, dst) in out.chunks_exact_mut(super::SUMS_GROUP_BYTES).enumerate() {
                let first = super::GROUP_COLS * g;
                let n = k.saturating_sub(first).min(super::GROUP_COLS);
                let mask: __mmask32 = (1u32 << n) - 1;
                let a = _mm256_maskz_loadu_epi8(mask, act.as_ptr().wrapping_add(first.min(k)));
                let a = _mm512_cvtepi8_epi16(a);
                let negated = _mm512_sub_epi16(_mm512_setzero_si512(), a);
                let entries: [__m512i; 4] = std::array::from_fn(|j| {
                    index[j].iter().fold(offset, |v, &digit| {
                        _mm512_add_epi16(v, _mm512_permutex2var_epi16(a, digit, negated))
                    })
                });
                for h in 0..2 {
                    let (v0, v1) = (entries[2 * h], entries[2 * h + 1]);
                    let at = dst.as_mut_ptr().add(128 * h);
                    _mm512_storeu_si512(at as *mut __m512i, _mm512_permutex2var_epi8(v0, low, v1));
                    _mm512_storeu_si512(at.add(64) as *mut __m512i, _mm512_permutex2var_epi8(v0, high, v1));
                }
            }
        }
    }

    /// Σ σ·(table entry) for the 16 rows of each of T consecutive tiles (`stride` bytes apart)
    /// over `groups` groups from where `tiles` starts, from those groups' triple-sums `table`
    /// (`after`: where the weights read next start, to prefetch): each group's magnitude nibbles, with their slot's
    /// 16 in bits 4-5, index `vpermb` into the group's low-byte and high-byte tables, and
    /// `vpdpbusd` adds the four bytes of each row times their signs (±1 from the sign bits).
    /// The T tiles share each group's table loads.
    ///
    /// # Safety
    /// AVX-512F/BW, VNNI and VBMI; `tiles` holds T tiles of `groups` groups, `table` as many
    /// groups' tables.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    pub(super) unsafe fn tiles_sums<const T: usize>(
        tiles: &[u8],
        stride: usize,
        groups: usize,
        table: &[u8],
        after: *const u8,
    ) -> [[i32; 16]; T] {
        // The bytes of `groups` groups: a whole tile where `stride` equals it.
        let chunk = groups / BLOCK_GROUPS * BLOCK_BYTES;
        assert!(groups.is_multiple_of(BLOCK_GROUPS) && stride >= chunk);
        assert!(tiles.len() >= (T - 1) * stride + chunk && table.len() >= groups * super::SUMS_GROUP_BYTES);
        let (tiles, table) = (tiles.as_ptr(), table.as_ptr());
        let nib = _mm512_set1_epi8(0x0F);
        // Byte 4r + s of a magnitude vector is slot s: its table's entries start at 16s.
        let slot = _mm512_set1_epi32(0x3020_1000);
        let (plus, minus) = (_mm512_set1_epi8(1), _mm512_set1_epi8(-1));
        // Per tile, sums of low bytes and of high bytes.
        let mut acc = [[_mm512_setzero_si512(); 2]; T];
        // SAFETY (every load below): the extents asserted above.
        unsafe {
            for g in 0..groups {
                let (mags, signs) = super::group_at(g);
                let t = table.add(super::SUMS_GROUP_BYTES * g);
                let parts: [__m512i; 4] =
                    std::array::from_fn(|i| _mm512_loadu_si512(t.add(64 * i) as *const __m512i));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let tile = tiles.add(j * stride);
                    if g % BLOCK_GROUPS == 0 {
                        // Ahead in this tile, or past its end in the tile read after it.
                        let ahead = mags + SUMS_PREFETCH;
                        let at = if ahead < chunk {
                            tile.wrapping_add(ahead)
                        } else {
                            after.wrapping_add(j * stride + ahead - chunk)
                        };
                        for line in 0..5 {
                            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(64 * line) as *const i8);
                        }
                    }
                    let x = _mm512_loadu_si512(tile.add(mags) as *const __m512i);
                    let s = tile.add(signs) as *const u64;
                    let (s_lo, s_hi) = (s.read_unaligned(), s.add(1).read_unaligned());
                    let lo = _mm512_ternarylogic_epi32::<0xEA>(x, nib, slot);
                    let hi = _mm512_ternarylogic_epi32::<0xEA>(_mm512_srli_epi16::<4>(x), nib, slot);
                    let (sign_lo, sign_hi) = (
                        _mm512_mask_blend_epi8(s_lo, plus, minus),
                        _mm512_mask_blend_epi8(s_hi, plus, minus),
                    );
                    acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_permutexvar_epi8(lo, parts[0]), sign_lo);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], _mm512_permutexvar_epi8(lo, parts[1]), sign_lo);
                    acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_permutexvar_epi8(hi, parts[2]), sign_hi);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], _mm512_permutexvar_epi8(hi, parts[3]), sign_hi);
                }
            }
        }
        acc.map(|[low, high]| {
            let mut out = [0i32; 16];
            // SAFETY: 16 i32 into a 16-i32 array.
            unsafe {
                _mm512_storeu_si512(
                    out.as_mut_ptr() as *mut __m512i,
                    _mm512_add_epi32(low, _mm512_slli_epi32::<8>(high)),
                )
            };
            out
        })
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
        const ACC: usize = 6;
        // SAFETY (every load below): the caller guarantees `groups` groups of magnitudes and
        // signs at `tile` and N tokens of `per_token` arranged bytes at `acts`.
        unsafe {
            let table =
                |t: usize| _mm512_broadcast_i32x4(_mm_loadu_si128(CODES[t].as_ptr() as *const __m128i));
            let tables = [table(0), table(1), table(2)];
            let (nib, two) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(2));
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
                let code = |idx: __m512i, t: usize, negative: __mmask64| {
                    let c = _mm512_shuffle_epi8(tables[t], idx);
                    _mm512_mask_sub_epi8(c, negative, two, c)
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

    /// Shapes with partial tiles, groups and blocks, and the models' row lengths.
    const SHAPES: [(usize, usize); 7] =
        [(16, 24), (32, 256), (67, 512), (5, 40), (48, 2560), (64, 6912), (20, 1000)];

    /// Random codes of an `m × k` matrix and their tiles, with the stream that drew them.
    fn random_tiles(m: usize, k: usize, seed: u64) -> (impl FnMut() -> u64, Vec<i8>, TritTiles) {
        let mut r = stream(seed);
        let codes: Vec<i8> = (0..m * k).map(|_| (r() % 3) as i8 - 1).collect();
        let w = TritTiles::pack(&codes, m, k).unwrap();
        (r, codes, w)
    }

    /// The scalar reference and every instruction set equal the naive product of the codes, on
    /// shapes with padded rows and columns and for 1 to 17 tokens (passes of 8 and partial
    /// ones), over the whole matrix and a range of tiles.
    #[test]
    fn every_path_computes_the_exact_product() {
        for (m, k) in SHAPES {
            let (mut r, codes, w) = random_tiles(m, k, m as u64 * 1009 + k as u64);
            for tokens in [1usize, 2, 3, 8, 9, 17] {
                let acts: Vec<i8> =
                    (0..tokens * k).map(|i| if i % 13 == 0 { -128 } else { r() as i8 }).collect();
                let (arr, sums) = arranged(&acts, k);
                let want = naive(&codes, &acts, m, k, 0, m);
                for isa in [Isa::Scalar].into_iter().chain(crate::cpu::available()) {
                    let mut out = vec![0; m * tokens];
                    gemm(isa, &w, 0, m, &arr, &sums, &mut out);
                    assert_eq!(out, want, "{m}x{k}, {tokens} tokens, {}", isa.name());
                    if m > TILE_ROWS {
                        let mut part = vec![0; (m - TILE_ROWS) * tokens];
                        gemm(isa, &w, TILE_ROWS, m, &arr, &sums, &mut part);
                        assert_eq!(part, want[TILE_ROWS * tokens..], "{m}x{k} from row 16, {}", isa.name());
                    }
                }
            }
        }
    }

    /// The triple-sums tables built with SIMD equal the scalar build, entry for entry, on
    /// lengths that end inside a group and inside a block, with activations at −128 and 127.
    #[test]
    fn triple_sums_simd_equals_scalar() {
        for k in [1usize, 23, 24, 25, 96, 100, 1000, 2560, 6912] {
            let mut r = stream(k as u64 * 7 + 3);
            let act: Vec<i8> = (0..k)
                .map(|i| match i % 7 {
                    0 => -128,
                    3 => 127,
                    _ => r() as i8,
                })
                .collect();
            let mut want = vec![0u8; sums_len(k)];
            triple_sums_scalar(&act, &mut want);
            let mut got = vec![0u8; sums_len(k)];
            triple_sums(&act, &mut got);
            assert!(got == want, "k {k}");
        }
    }

    /// The one-token lookup product, on SIMD and on its scalar twin, equals the naive product,
    /// over whole matrices and from the second tile on, with activations at their extremes.
    #[test]
    fn lookup_product_is_exact() {
        for (m, k) in SHAPES {
            let (mut r, codes, w) = random_tiles(m, k, m as u64 * 31 + k as u64);
            for extreme in [None, Some(-128i8), Some(127)] {
                let act: Vec<i8> = (0..k).map(|_| extreme.unwrap_or(r() as i8)).collect();
                let mut table = vec![0u8; sums_len(k)];
                triple_sums(&act, &mut table);
                let want = naive(&codes, &act, m, k, 0, m);
                for isa in [Isa::Scalar].into_iter().chain(crate::cpu::available()) {
                    let mut out = vec![0; m];
                    gemv_sums(isa, &w, 0, m, &table, &mut out);
                    assert_eq!(out, want, "{m}x{k} {extreme:?} on {}", isa.name());
                    if m > TILE_ROWS {
                        let mut part = vec![0; m - TILE_ROWS];
                        gemv_sums(isa, &w, TILE_ROWS, m, &table, &mut part);
                        assert_eq!(part, want[TILE_ROWS..], "{m}x{k} from row 16 on {}", isa.name());
                    }
                }
            }
        }
    }

    /// Every weight +1 (or −1) against activations −128 (or 127) at the widest row the models
    /// have: the 32-bit sums at their largest, and every triple sum at an end of its range, on
    /// every path.
    #[test]
    fn sums_at_the_extremes() {
        let (m, k) = (16usize, 6912usize);
        for a in [-128i8, 127] {
            let acts = vec![a; k];
            let (arr, sums) = arranged(&acts, k);
            let mut table = vec![0u8; sums_len(k)];
            triple_sums(&acts, &mut table);
            for sign in [1i8, -1] {
                let w = TritTiles::pack(&vec![sign; m * k], m, k).unwrap();
                let want = a as i32 * sign as i32 * k as i32;
                for isa in [Isa::Scalar].into_iter().chain(crate::cpu::available()) {
                    let mut out = vec![0; m];
                    gemm(isa, &w, 0, m, &arr, &sums, &mut out);
                    assert!(out.iter().all(|&v| v == want), "{a} × {sign} on {}", isa.name());
                    gemv_sums(isa, &w, 0, m, &table, &mut out);
                    assert!(out.iter().all(|&v| v == want), "{a} × {sign} by triple sums on {}", isa.name());
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
