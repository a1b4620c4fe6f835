//! Σ t·q for every ternary layout, over a range of rows of one matrix, dispatched by
//! [`Layout`] to the layout's kernel module (`kernels::{i2s, tq2_0, tq1_0, tl1, tl2}`, each with
//! a scalar reference and AVX2 / NEON variants). Every path computes the same exact integers as
//! the I2_S kernels (tested below and in `tests/runtime.rs`: all layouts give bit-identical
//! hidden states).
//!
//! The lookup-table layouts (TL1, TL2) read per-token [`Tables`] built from the activations;
//! callers build them once per quantised input ([`Tables::build`]) and share them across the
//! matrices reading that input (q/k/v, gate/up) and across threads.

use crate::cpu::Isa;
use crate::kernels::i2s_tiles::{self, I2sTiles};
use crate::kernels::trit_tiles::{self, TritTiles};
use crate::kernels::{i2s, tl1, tl2, tq1_0 as tq1_kernels, tq2_0 as tq2_kernels};
use rayon::prelude::*;
use tern_formats::tiles::Tiles;
use tern_formats::{Layout, i2s as i2s_format, tq1_0, tq2_0};
/// A ternary matrix's bytes with what is needed to read them.
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    pub tiles: Option<Tiles>,
    /// The whole tensor's data.
    pub bytes: &'a [u8],
    /// The same weights repacked at load for the instruction sets that read them so
    /// (`trit_tiles::wanted`), which then never read `bytes`.
    pub trit_tiles: Option<&'a TritTiles>,
    /// An I2_S matrix repacked at load for the instruction sets that read it so
    /// (`i2s_tiles::wanted`), which then never read `bytes`.
    pub i2s_tiles: Option<&'a I2sTiles>,
}

impl<'a> Packed<'a> {
    /// A matrix read from its file bytes alone.
    pub fn new(
        layout: Layout,
        rows: usize,
        cols: usize,
        tiles: Option<Tiles>,
        bytes: &'a [u8],
    ) -> Packed<'a> {
        Packed { layout, rows, cols, tiles, bytes, trit_tiles: None, i2s_tiles: None }
    }

    /// Rows stored together (the unit rows can be split at): BM for tiled layouts, else 1; a
    /// whole tile of 16 with trit tiles or I2_S tiles.
    pub fn row_group(&self) -> usize {
        let group = self.tiles.map_or(1, |t| t.rows);
        if self.trit_tiles.is_some() || self.i2s_tiles.is_some() {
            group.max(trit_tiles::TILE_ROWS.max(i2s_tiles::TILE_ROWS))
        } else {
            group
        }
    }

    /// The I2_S tiles a product on `isa` reads, if any.
    pub fn reads_i2s_tiles(&self, isa: Isa) -> Option<&'a I2sTiles> {
        self.i2s_tiles.filter(|_| i2s_tiles::runs(isa))
    }

    /// The trit tiles a product on `isa` reads, if any.
    pub fn reads_trit_tiles(&self, isa: Isa) -> Option<&'a TritTiles> {
        self.trit_tiles.filter(|_| trit_tiles::runs(isa))
    }

    /// Activations per token the kernels read (I2_S rows are padded to 128-weight blocks).
    pub fn padded_cols(&self) -> usize {
        match self.layout {
            Layout::I2S => i2s_format::row_bytes(self.cols) * 4,
            _ => self.cols,
        }
    }
}

/// Which tables a matrix's kernel reads; equal keys over equal activations mean equal tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKey {
    /// TL1: pair tables over every column.
    Pairs,
    /// TL2: triple tables over the first `k3` columns, pair tables over the rest.
    Triples { k3: usize },
    /// No tables: the activations in the order trit tiles are read in (`trit_tiles::arrange`).
    TritOrder,
    /// One token's triple sums for the lookup product from trit tiles (`trit_tiles::triple_sums`).
    TritSums,
}

impl Packed<'_> {
    /// The tables this matrix's kernel reads for `tokens` tokens on `isa`, if any (TL1 and TL2
    /// read none where several tokens run decoded, `tl1::runs_decoded`).
    pub fn tables_read(&self, isa: Isa, tokens: usize) -> Option<TableKey> {
        if self.reads_trit_tiles(isa).is_some() {
            let lookup = tokens == 1 && trit_tiles::runs_on_sums(isa);
            return Some(if lookup { TableKey::TritSums } else { TableKey::TritOrder });
        }
        let decoded = match self.layout {
            Layout::TL1 => tl1::runs_decoded(isa, tokens),
            Layout::TL2 => tl2::runs_decoded(isa, tokens),
            _ => false,
        };
        if decoded {
            return None;
        }
        self.table_key()
    }

    /// Whether one token's product on `isa` runs best with each thread taking one unbroken part
    /// of the matrix in one call rather than short chunks: I2_S, whose VNNI GEMV reads four
    /// quarter streams (at least as well as runs of 16-row bands of the quarters); TQ2_0, whose
    /// GEMV reads four quarter streams on Intel; and trit tiles' lookup product, whose four
    /// streams start cold in every call (docs/performance-notes.md, "Row chunks", "Trit tiles").
    pub fn generates_in_one_part(&self, isa: Isa) -> bool {
        matches!(self.layout, Layout::I2S | Layout::TQ2_0)
            || self.tables_read(isa, 1) == Some(TableKey::TritSums)
    }

    /// The tables this matrix's kernels read, if any.
    pub fn table_key(&self) -> Option<TableKey> {
        match (self.layout, self.tiles) {
            (Layout::TL1, Some(_)) => Some(TableKey::Pairs),
            (Layout::TL2, Some(t)) => Some(TableKey::Triples { k3: tl2::triple_cols(self.cols, t) }),
            _ => None,
        }
    }
}

/// Lookup tables for every token of a quantised input.
pub struct Tables {
    pub key: TableKey,
    per_token: usize,
    bytes: Vec<u8>,
}

impl Tables {
    /// Tables of kind `key` for `tokens` rows of `k` activations (`acts.len() == tokens·k`).
    pub fn build(key: TableKey, acts: &[i8], k: usize) -> Tables {
        let per_token = match key {
            TableKey::Pairs => tl1::tables_len(k),
            TableKey::Triples { k3 } => tl2::tables_len(k, k3),
            TableKey::TritOrder => trit_tiles::arranged_len(k),
            TableKey::TritSums => trit_tiles::sums_len(k),
        };
        let mut bytes = vec![0u8; acts.len() / k * per_token];
        bytes.par_chunks_mut(per_token).zip(acts.par_chunks(k)).for_each(|(dst, act)| match key {
            TableKey::Pairs => tl1::tables(act, dst),
            TableKey::Triples { k3 } => tl2::tables(act, k3, dst),
            TableKey::TritOrder => trit_tiles::arrange(act, dst),
            TableKey::TritSums => trit_tiles::triple_sums(act, dst),
        });
        Tables { key, per_token, bytes }
    }

    fn token(&self, t: usize) -> &[u8] {
        &self.bytes[t * self.per_token..][..self.per_token]
    }
}

/// The quantised input of a product: `tokens` rows of `padded_cols()` activations in
/// −127..=127, their sums Σq, and their lookup tables when the caller has built them.
#[derive(Clone, Copy)]
pub struct Acts<'a> {
    pub codes: &'a [i8],
    pub sums: &'a [i32],
    /// Tables of this input (built inside when missing or of another kind).
    pub tables: Option<&'a Tables>,
    /// This input laid out for the prompt GEMM (built inside, per call, when missing).
    pub panel: Option<&'a Panel>,
}

pub use super::i2s::Panel;

/// The [`Panel`] of `tokens = sums.len()` rows of `k` activations when a product of `layout` on
/// `isa` would read one (AMX tiles for the layouts whose rows unpack to codes, the AVX2 lookup
/// GEMM's columns for I2_S), else `None`.
pub fn panel(isa: Isa, layout: Layout, acts: &[i8], sums: &[i32], k: usize) -> Option<Panel> {
    if !matches!(layout, Layout::I2S | Layout::TQ2_0 | Layout::TQ1_0) {
        return None;
    }
    Panel::for_product(isa, layout == Layout::I2S, acts, sums, k)
}

/// Tokens per span when a prompt's product is split by tokens ([`token_spans`]): one chunk of
/// the lookup GEMM's tables.
pub const TOKEN_SPAN: usize = i2s::LOOKUP_CHUNK_TOKENS;

/// The spans of [`TOKEN_SPAN`] tokens (the last shorter) a product of `layout` over `tokens`
/// tokens on `isa` is split into, one task each over every row, when it runs on the AVX2 lookup
/// GEMM and has more than one span; else `None` (tasks take parts of the rows).
pub fn token_spans(isa: Isa, layout: Layout, tokens: usize) -> Option<Vec<std::ops::Range<usize>>> {
    (tokens > TOKEN_SPAN && wants_long_calls(isa, layout, tokens))
        .then(|| (0..tokens).step_by(TOKEN_SPAN).map(|t| t..(t + TOKEN_SPAN).min(tokens)).collect())
}

/// Whether a product of `layout` over `tokens` tokens on `isa` wants each task to bring as many
/// rows as it can: the AVX2 lookup GEMM builds its tables once per call.
pub fn wants_long_calls(isa: Isa, layout: Layout, tokens: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if layout == Layout::I2S {
        return i2s::runs_on_tables(isa, tokens);
    }
    let _ = (isa, layout, tokens);
    false
}

/// The caller's tables when they are of kind `key`, else tables of that kind built into `own`.
fn given_or_built<'t>(
    given: Option<&'t Tables>,
    key: TableKey,
    acts: &[i8],
    k: usize,
    own: &'t mut Option<Tables>,
) -> &'t Tables {
    match given {
        Some(tables) if tables.key == key => tables,
        _ => own.insert(Tables::build(key, acts, k)),
    }
}

/// `out[(r − r0)·tokens + t] = Σ_k t[r,k]·q[t,k]` for rows `r0..r1` (multiples of the row group).
pub fn gemm_rows(isa: Isa, w: &Packed, r0: usize, r1: usize, a: Acts, out: &mut [i32]) {
    let (acts, sums) = (a.codes, a.sums);
    let tokens = sums.len();
    let k = w.padded_cols();
    assert!(
        r0 <= r1
            && r1 <= w.rows
            && r0.is_multiple_of(w.row_group())
            && (r1.is_multiple_of(w.row_group()) || r1 == w.rows)
    );
    assert_eq!((acts.len(), out.len()), (tokens * k, (r1 - r0) * tokens));
    if let Some(tt) = w.reads_trit_tiles(isa) {
        let mut own = None;
        let key = w.tables_read(isa, tokens).expect("trit tiles read their tokens' tables");
        let tables = given_or_built(a.tables, key, acts, k, &mut own);
        if key == TableKey::TritSums {
            trit_tiles::gemv_sums(isa, tt, r0, r1, &tables.bytes, out);
        } else {
            trit_tiles::gemm(isa, tt, r0, r1, &tables.bytes, sums, out);
        }
        return;
    }
    if let Some(it) = w.reads_i2s_tiles(isa) {
        i2s_tiles::gemm(isa, it, r0, r1, acts, sums, out);
        return;
    }
    match w.layout {
        Layout::I2S => {
            let rb = i2s_format::row_bytes(w.cols);
            i2s::gemm_with_panel(isa, &w.bytes[r0 * rb..r1 * rb], rb, acts, sums, a.panel, out);
        }
        Layout::TQ2_0 => {
            let rb = w.cols / tq2_0::BLOCK * tq2_0::BLOCK_BYTES;
            let (rows, dot, unpack) = (&w.bytes[r0 * rb..r1 * rb], tq2_kernels::dot, tq2_kernels::UNPACK);
            let dot4 = Some(tq2_kernels::dot4 as i2s::Dot4);
            i2s::gemm_decoded(isa, rows, rb, k, (acts, sums, a.panel), out, dot, dot4, unpack);
        }
        Layout::TQ1_0 => {
            let rb = w.cols / tq1_0::BLOCK * tq1_0::BLOCK_BYTES;
            let (rows, dot, unpack) = (&w.bytes[r0 * rb..r1 * rb], tq1_kernels::dot, tq1_kernels::UNPACK);
            i2s::gemm_decoded(isa, rows, rb, k, (acts, sums, a.panel), out, dot, None, unpack);
        }
        Layout::TL1 if tl1::runs_decoded(isa, tokens) => {
            // Several tokens: each row block decoded once for all of them, no tables.
            let t = w.tiles.expect("tiled layouts carry tiles");
            let block_bytes = t.rows * w.cols / 4;
            for (i, o) in (r0 / t.rows..r1.div_ceil(t.rows)).zip(out.chunks_mut(t.rows * tokens)) {
                let block = &w.bytes[i * block_bytes..][..block_bytes];
                tl1::block_tokens(isa, block, w.cols, t, acts, sums, o);
            }
        }
        Layout::TL2 if tl2::runs_decoded(isa, tokens) => {
            // Several tokens: each row block decoded once for all of them, no tables.
            let t = w.tiles.expect("tiled layouts carry tiles");
            for (i, o) in (r0 / t.rows..r1.div_ceil(t.rows)).zip(out.chunks_mut(t.rows * tokens)) {
                tl2::block_tokens(isa, w.bytes, w.rows, w.cols, t, i, acts, sums, o);
            }
        }
        Layout::TL1 | Layout::TL2 => {
            let t = w.tiles.expect("tiled layouts carry tiles");
            let key = w.table_key().expect("tiled layouts read tables");
            let mut own = None;
            let tables = given_or_built(a.tables, key, acts, k, &mut own);
            let mut acc = vec![0i32; t.rows];
            // Row block outer, token inner: the block's weights stay in cache across tokens.
            for i0 in r0 / t.rows..r1.div_ceil(t.rows) {
                for (tok, act) in acts.chunks_exact(k).enumerate() {
                    let lut = tables.token(tok);
                    if w.layout == Layout::TL1 {
                        let block = &w.bytes[i0 * t.rows * w.cols / 4..][..t.rows * w.cols / 4];
                        tl1::block(isa, block, w.cols, t, act, lut, &mut acc);
                    } else {
                        tl2::block(isa, w.bytes, w.rows, w.cols, t, i0, act, lut, &mut acc);
                    }
                    for (j, &v) in acc.iter().enumerate() {
                        out[(i0 * t.rows + j - r0) * tokens + tok] = v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    fn naive(codes: &[i8], acts: &[i8], m: usize, k: usize) -> Vec<i32> {
        (0..m)
            .flat_map(|row| {
                let c = &codes[row * k..][..k];
                acts.chunks_exact(k).map(move |a| c.iter().zip(a).map(|(&t, &q)| t as i32 * q as i32).sum())
            })
            .collect()
    }

    /// Runs every instruction set on `layout` with `tiles` and checks the whole matrix, a row
    /// range, and the result with prebuilt tables against the naive product.
    fn check(layout: Layout, tiles: Option<Tiles>, codes: &[i8], acts: &[i8], m: usize, k: usize) {
        let tokens = acts.len() / k;
        let want = naive(codes, acts, m, k);
        let bytes = layout.pack(codes, m, k, 1.0, tiles);
        let w = Packed::new(layout, m, k, tiles, &bytes);
        let kp = w.padded_cols();
        let mut padded = vec![0i8; tokens * kp];
        for (dst, src) in padded.chunks_exact_mut(kp).zip(acts.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
        let sums: Vec<i32> = acts.chunks_exact(k).map(|a| a.iter().map(|&v| v as i32).sum()).collect();
        let tables = w.table_key().map(|key| Tables::build(key, &padded, kp));
        let what = format!("{} {m}x{k} {tiles:?}", layout.name());
        // The same products from trit tiles, where an instruction set here reads them.
        if crate::cpu::available().into_iter().any(|isa| trit_tiles::wanted(isa, layout)) {
            let tt = TritTiles::from_layout(layout, &bytes, m, k, tiles).unwrap();
            let w = Packed { trit_tiles: Some(&tt), ..w };
            let arranged = Tables::build(TableKey::TritOrder, &padded, kp);
            // One token's triple sums: read where one token runs on them, else ignored.
            let triple_sums = Tables::build(TableKey::TritSums, &padded, kp);
            for isa in crate::cpu::available() {
                for given in [None, tables.as_ref(), Some(&arranged), Some(&triple_sums)] {
                    let mut out = vec![0; m * tokens];
                    let a = Acts { codes: &padded, sums: &sums, tables: given, panel: None };
                    gemm_rows(isa, &w, 0, m, a, &mut out);
                    assert_eq!(out, want, "{what} {} from trit tiles", isa.name());
                }
                let g = w.row_group();
                if 2 * g <= m {
                    let mut part = vec![0; (m - g) * tokens];
                    let a = Acts { codes: &padded, sums: &sums, tables: None, panel: None };
                    gemm_rows(isa, &w, g, m, a, &mut part);
                    assert_eq!(part[..], want[g * tokens..], "{what} {} trit tiles from row {g}", isa.name());
                }
            }
        }
        // The same products from I2_S tiles, where an instruction set here reads them.
        if crate::cpu::available().into_iter().any(|isa| i2s_tiles::wanted(isa, layout)) {
            let it = I2sTiles::from_layout_in(None, layout, &bytes, m, k).unwrap();
            let w = Packed { i2s_tiles: Some(&it), ..w };
            for isa in crate::cpu::available() {
                let mut out = vec![0; m * tokens];
                let a = Acts { codes: &padded, sums: &sums, tables: None, panel: None };
                gemm_rows(isa, &w, 0, m, a, &mut out);
                assert_eq!(out, want, "{what} {} from I2_S tiles", isa.name());
                let g = w.row_group();
                if 2 * g <= m {
                    let mut part = vec![0; (m - g) * tokens];
                    let a = Acts { codes: &padded, sums: &sums, tables: None, panel: None };
                    gemm_rows(isa, &w, g, m, a, &mut part);
                    assert_eq!(part[..], want[g * tokens..], "{what} {} I2_S tiles from row {g}", isa.name());
                }
            }
        }
        for isa in crate::cpu::available() {
            let mut out = vec![0; m * tokens];
            gemm_rows(
                isa,
                &w,
                0,
                m,
                Acts { codes: &padded, sums: &sums, tables: None, panel: None },
                &mut out,
            );
            assert_eq!(out, want, "{what} {}", isa.name());
            out.fill(0);
            gemm_rows(
                isa,
                &w,
                0,
                m,
                Acts { codes: &padded, sums: &sums, tables: tables.as_ref(), panel: None },
                &mut out,
            );
            assert_eq!(out, want, "{what} {} (shared tables)", isa.name());
            let g = w.row_group();
            if 2 * g <= m {
                let mut part = vec![0; g * tokens];
                gemm_rows(
                    isa,
                    &w,
                    g,
                    2 * g,
                    Acts { codes: &padded, sums: &sums, tables: tables.as_ref(), panel: None },
                    &mut part,
                );
                assert_eq!(
                    part[..],
                    want[g * tokens..2 * g * tokens],
                    "{what} {} rows {g}..{}",
                    isa.name(),
                    2 * g
                );
            }
        }
    }

    /// Every layout's kernels equal the naive product of the codes they were packed from, on
    /// every instruction set, for random and awkward shapes and for every TL sub-tile kind.
    #[test]
    fn every_layout_computes_the_exact_product() {
        for (m, k) in [
            (64usize, 256usize),
            (128, 512),
            (256, 288),
            (96, 768),
            (64, 320),
            (32, 2560),
            (192, 1536),
            (67, 512),
            (5, 256),
        ] {
            let mut r = stream(m as u64 * 31 + k as u64);
            let codes: Vec<i8> = (0..m * k).map(|_| (r() % 3) as i8 - 1).collect();
            let acts: Vec<i8> =
                (0..11 * k).map(|i| if i % 17 == 0 { -127 } else { (r() % 255) as i8 }).collect();
            for layout in [Layout::I2S, Layout::TL1, Layout::TL2, Layout::TQ1_0, Layout::TQ2_0] {
                let Some(tiles) = layout.fit(m, k) else { continue };
                // One token (generation), three, and eleven (a full pass of the small-batch GEMM
                // and a partial one).
                for tokens in [1, 3, 11] {
                    check(layout, tiles, &codes, &acts[..tokens * k], m, k);
                }
            }
            // Tiles other than the rule's choice: TL1 with bm = 64 (bitnet.cpp's presets use it),
            // small and large K blocks; TL2 with other K blocks (other tails).
            let extra = [
                (Layout::TL1, Tiles { rows: 64, cols: 64, sub_rows: 64 }),
                (Layout::TL1, Tiles { rows: 64, cols: 256, sub_rows: 64 }),
                (Layout::TL1, Tiles { rows: 32, cols: 8, sub_rows: 32 }),
                (Layout::TL1, Tiles { rows: 128, cols: 256, sub_rows: 32 }),
                (Layout::TL2, Tiles { rows: 32, cols: 192, sub_rows: 32 }),
                (Layout::TL2, Tiles { rows: 64, cols: 24, sub_rows: 32 }),
            ];
            for (layout, t) in extra {
                if tern_formats::tiles::check(layout, m, k, t).is_ok() {
                    check(layout, Some(t), &codes, &acts[..3 * k], m, k);
                }
            }
        }
    }

    /// The int16 sums of the lookup-table kernels at their bound: all weights +1 (or −1) against
    /// all activations −127 over the largest K block the tiles allow.
    #[test]
    fn lookup_tables_do_not_overflow_at_the_extremes() {
        let (m, k) = (64usize, 512usize);
        let acts = vec![-127i8; k];
        for sign in [1i8, -1] {
            let codes = vec![sign; m * k];
            for (layout, t) in [
                (Layout::TL1, Tiles { rows: 64, cols: 256, sub_rows: 64 }),
                (Layout::TL1, Tiles { rows: 64, cols: 256, sub_rows: 32 }),
                (Layout::TL2, Tiles { rows: 64, cols: 240, sub_rows: 32 }),
            ] {
                tern_formats::tiles::check(layout, m, k, t).unwrap();
                check(layout, Some(t), &codes, &acts, m, k);
            }
        }
    }
}
