//! The integer output head (Q8_0 and Q4_0 rows: `tern convert --output-type`): the rows are
//! repacked once at load into tiles of 16 ([`HeadTiles`]) and dotted against the final normed
//! state, quantised once per position to int8 blocks of 32 ([`HeadActs`]).
//!
//! Why tiles: with one row in each 32-bit lane of a 512-bit register, one `vpdpbusd` multiplies
//! four weights of 16 rows by a broadcast of four activations, and a block's scales reach its 16
//! rows with one conversion, one multiply and one FMA. A row at a time paid a conversion, a
//! multiply and an FMA per 32 weights, then a horizontal sum per row, and that arithmetic, not
//! memory, bounded the head (docs/performance-notes.md, "Quantised heads").
//!
//! A tile stores its blocks in pairs: the 16 rows' f16 scales of block 2p (32 bytes), those of
//! block 2p + 1, then the codes of block 2p and of 2p + 1, each in groups of 64 bytes whose byte
//! 4r + i is row r's stored byte 4g + i of that block. Q4_0 (4 groups): the file's own byte,
//! element 4g + i as q + 8 in the low nibble and element 16 + 4g + i in the high one. Q8_0 (8
//! groups): the weight plus 128. A pair is 576 (Q4_0) or 1088 (Q8_0) bytes, whole cache lines,
//! and a tile's pairs, then the next tile's, make one forward stream; zero rows pad the last tile.
//!
//! The arithmetic, fixed so every variant gives the same bits: per row, block by block in order,
//! the exact integer Σ w·x of the block's 32 products, then `acc = fma(Σ, f32(d_w) · d_x, acc)`
//! from `acc = 0`. Variants: scalar (the twin), AVX-512 VNNI, AVX2, NEON; tested bit for bit
//! against each other and against that sum computed from the file's own rows.

use crate::cpu::Isa;
use half::f16;
use rayon::prelude::*;
use tern_formats::TensorType;
use tern_formats::float_blocks::{Q4_0_BYTES, Q8_0_BYTES};

/// Rows per tile: one 32-bit lane per row of a 512-bit register.
pub const TILE_ROWS: usize = 16;
/// Bytes of one block's scales in a tile: 16 f16.
const SCALE_BYTES: usize = 2 * TILE_ROWS;
/// Positions one pass of a kernel dots each tile block against, at most.
const MAX_PASS: usize = 8;

/// One position's hidden state as int8 blocks of 32: `x ≈ q · d` per block, q in [-127, 127].
pub struct HeadActs {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    /// Σ q of each block: the codes are stored as w + 8 (Q4_0) or w + 128 (Q8_0) so `vpdpbusd`
    /// can multiply them unsigned; this takes the offset out again.
    pub sums: Vec<i32>,
}

impl HeadActs {
    /// `x.len()` must be a multiple of 32 (the loader checks the head's row length).
    pub fn quantise(x: &[f32]) -> HeadActs {
        let blocks = x.len() / 32;
        let mut acts =
            HeadActs { q: Vec::with_capacity(x.len()), d: Vec::with_capacity(blocks), sums: Vec::new() };
        for b in x.chunks_exact(32) {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            acts.q.extend(b.iter().map(|v| (v * id).round_ties_even().clamp(-127.0, 127.0) as i8));
            acts.d.push(d);
        }
        acts.sums = acts.q.chunks_exact(32).map(|q| q.iter().map(|&v| v as i32).sum()).collect();
        acts
    }

    fn blocks(&self) -> usize {
        self.d.len()
    }
}

/// Bytes per 32-weight block of a head type these kernels run.
pub fn block_bytes(ty: TensorType) -> Option<usize> {
    match ty {
        TensorType::Q8_0 => Some(Q8_0_BYTES),
        TensorType::Q4_0 => Some(Q4_0_BYTES),
        _ => None,
    }
}

/// Code bytes of one block of a tile's 16 rows.
const fn code_bytes(q4: bool) -> usize {
    if q4 { 256 } else { 512 }
}

/// Bytes of two blocks of a tile: their scales, then their codes.
const fn pair_bytes(q4: bool) -> usize {
    2 * SCALE_BYTES + 2 * code_bytes(q4)
}

/// Where block `b`'s scales and codes start in a tile.
const fn block_at(q4: bool, b: usize) -> (usize, usize) {
    let pair = (b / 2) * pair_bytes(q4);
    (pair + (b % 2) * SCALE_BYTES, pair + 2 * SCALE_BYTES + (b % 2) * code_bytes(q4))
}

/// What Σ code·x over a block must add to be Σ w·x: the codes are w + 8 (Q4_0) or w + 128.
fn code_offset(q4: bool, sum: i32) -> i32 {
    -sum * if q4 { 8 } else { 128 }
}

/// A Q4_0 or Q8_0 head in tiles of 16 rows (module docs), in its own anonymous map.
pub struct HeadTiles {
    q4: bool,
    rows: usize,
    blocks: usize,
    map: memmap2::MmapMut,
}

impl std::fmt::Debug for HeadTiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeadTiles({}, {}x{})", if self.q4 { "Q4_0" } else { "Q8_0" }, self.rows, 32 * self.blocks)
    }
}

impl HeadTiles {
    /// Tiles of the `rows × cols` matrix of type `ty` (Q4_0 or Q8_0) stored row-major in
    /// `bytes`, a row block at a time on every thread.
    pub fn pack(ty: TensorType, bytes: &[u8], rows: usize, cols: usize) -> std::io::Result<HeadTiles> {
        let block = block_bytes(ty).unwrap_or_else(|| panic!("no integer head kernels for {ty}"));
        assert!(cols.is_multiple_of(32) && cols > 0, "a head row holds whole blocks of 32");
        let row_bytes = cols / 32 * block;
        assert_eq!(bytes.len(), rows * row_bytes, "head bytes and shape differ");
        let q4 = ty == TensorType::Q4_0;
        let blocks = cols / 32;
        let tile_bytes = blocks.div_ceil(2) * pair_bytes(q4);
        let mut map = memmap2::MmapMut::map_anon((rows.div_ceil(TILE_ROWS) * tile_bytes).max(1))?;
        #[cfg(target_os = "linux")]
        // Only a hint: without 2 MiB pages the tiles work as well, a little slower.
        let _ = map.advise(memmap2::Advice::HugePage);
        map[..rows.div_ceil(TILE_ROWS) * tile_bytes]
            .par_chunks_mut(tile_bytes)
            .zip(bytes.par_chunks(TILE_ROWS * row_bytes))
            .for_each(|(tile, src)| pack_tile(q4, src, row_bytes, tile));
        Ok(HeadTiles { q4, rows, blocks, map })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        32 * self.blocks
    }

    fn tile_bytes(&self) -> usize {
        self.blocks.div_ceil(2) * pair_bytes(self.q4)
    }

    /// The tiles' bytes: what the kernels read per token.
    pub fn bytes(&self) -> &[u8] {
        &self.map[..self.rows.div_ceil(TILE_ROWS) * self.tile_bytes()]
    }

    fn tile(&self, t: usize) -> &[u8] {
        &self.bytes()[t * self.tile_bytes()..(t + 1) * self.tile_bytes()]
    }
}

/// Up to 16 rows (`src`, `row_bytes` each) into one zeroed tile.
fn pack_tile(q4: bool, src: &[u8], row_bytes: usize, tile: &mut [u8]) {
    let block = if q4 { Q4_0_BYTES } else { Q8_0_BYTES };
    for (r, row) in src.chunks_exact(row_bytes).enumerate() {
        for (b, blk) in row.chunks_exact(block).enumerate() {
            let (scales, codes) = block_at(q4, b);
            tile[scales + 2 * r..scales + 2 * r + 2].copy_from_slice(&blk[..2]);
            for (j, &byte) in blk[2..].iter().enumerate() {
                tile[codes + 64 * (j / 4) + 4 * r + j % 4] = if q4 { byte } else { byte ^ 0x80 };
            }
        }
    }
}

/// The head kernel for a CPU, resolved once per head: which variant [`dot_rows`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel(Variant);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    /// The variant for `isa`, if this CPU runs it (F16C converts the scales on x86); scalar else.
    pub fn for_isa(isa: Isa) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        let f16c = is_x86_feature_detected!("f16c");
        Kernel(match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if isa.supported() && f16c => Variant::Vnni,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.supported() && f16c => Variant::Avx2,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if isa.supported() => Variant::Neon,
            _ => Variant::Scalar,
        })
    }

    /// Positions one pass dots a tile against: as many as keep the accumulators in registers.
    fn pass(self) -> usize {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 => 2,
            #[cfg(target_arch = "aarch64")]
            Variant::Neon => 1,
            _ => MAX_PASS,
        }
    }
}

/// Rows `first..first + out.len() / n` of the head against the `n` positions of `acts`:
/// `out[(r - first) · n + p]` for row r and position p. `first` is a multiple of 16.
pub fn dot_rows(kernel: Kernel, tiles: &HeadTiles, first: usize, acts: &[HeadActs], out: &mut [f32]) {
    dot_rows_streams(kernel, tiles, first, acts, out, crate::cpu::weight_streams() == 4);
}

/// [`dot_rows`], with AVX2 reading four tiles at once for one position if `four_streams` (what a
/// CPU that wants four weight streams reads fastest: docs/performance-notes.md, "Quantised
/// heads"); the same bits either way.
fn dot_rows_streams(
    kernel: Kernel,
    tiles: &HeadTiles,
    first: usize,
    acts: &[HeadActs],
    out: &mut [f32],
    four_streams: bool,
) {
    let n = acts.len();
    assert!(n > 0 && out.len().is_multiple_of(n), "one result per row and position");
    let count = out.len() / n;
    assert!(first.is_multiple_of(TILE_ROWS) && first + count <= tiles.rows, "rows outside the head");
    assert!(
        acts.iter().all(|a| a.blocks() == tiles.blocks
            && a.q.len() == 32 * tiles.blocks
            && a.sums.len() == tiles.blocks),
        "head rows and activations differ in length"
    );
    let put = |t: usize, p0: usize, got: &[[f32; TILE_ROWS]], out: &mut [f32]| {
        for r in 0..TILE_ROWS {
            let row = t * TILE_ROWS + r;
            if row >= first + count {
                break;
            }
            for (p, g) in got.iter().enumerate() {
                out[(row - first) * n + p0 + p] = g[r];
            }
        }
    };
    let (start, end) = (first / TILE_ROWS, (first + count).div_ceil(TILE_ROWS));
    #[cfg(target_arch = "x86_64")]
    let next = if kernel.0 == Variant::Avx2 && n == 1 && four_streams {
        // Four streams: the i-th tile of each quarter of the range together.
        let quarter = (end - start) / 4;
        for i in 0..quarter {
            let at = [0, 1, 2, 3].map(|q| start + q * quarter + i);
            let mut got = [[0f32; TILE_ROWS]; 4];
            let [g0, g1, g2, g3] = &mut got;
            // SAFETY: `Kernel::for_isa` chose AVX2 after detecting it and F16C; each tile holds
            // `tiles.blocks` blocks, as the position's activations do.
            unsafe {
                x86::tiles4_avx2(
                    tiles.q4,
                    at.map(|t| tiles.tile(t)),
                    tiles.blocks,
                    &acts[0],
                    [g0, g1, g2, g3],
                )
            };
            for (t, g) in at.into_iter().zip(&got) {
                put(t, 0, std::slice::from_ref(g), out);
            }
        }
        start + 4 * quarter
    } else {
        start
    };
    #[cfg(not(target_arch = "x86_64"))]
    let next = {
        let _ = four_streams;
        start
    };
    let mut got = [[0f32; TILE_ROWS]; MAX_PASS];
    for t in next..end {
        let tile = tiles.tile(t);
        let mut p0 = 0;
        while p0 < n {
            let pass = (n - p0).min(kernel.pass());
            let (a, g) = (&acts[p0..p0 + pass], &mut got[..pass]);
            match kernel.0 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Kernel::for_isa` chose these after detecting their features; the
                // tile holds `tiles.blocks` blocks, as every position's activations do.
                Variant::Vnni => unsafe { x86::tile_vnni(tiles.q4, tile, tiles.blocks, a, g) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Variant::Avx2 => unsafe { x86::tile_avx2(tiles.q4, tile, tiles.blocks, a, g) },
                #[cfg(target_arch = "aarch64")]
                Variant::Neon => arm::tile_neon(tiles.q4, tile, tiles.blocks, &a[0], &mut g[0]),
                Variant::Scalar => tile_scalar(tiles.q4, tile, tiles.blocks, a, g),
            }
            put(t, p0, &got[..pass], out);
            p0 += pass;
        }
    }
}

fn scale(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The scalar twin: one tile's 16 rows against each position of `acts` (`out[p][r]`).
fn tile_scalar(q4: bool, tile: &[u8], blocks: usize, acts: &[HeadActs], out: &mut [[f32; TILE_ROWS]]) {
    for (a, out) in acts.iter().zip(out) {
        for (r, o) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..blocks {
                let (scales, codes) = block_at(q4, b);
                let x = &a.q[32 * b..32 * b + 32];
                let mut sum = code_offset(q4, a.sums[b]);
                for j in 0..if q4 { 16 } else { 32 } {
                    let byte = tile[codes + 64 * (j / 4) + 4 * r + j % 4];
                    sum += if q4 {
                        (byte & 0xF) as i32 * x[j] as i32 + (byte >> 4) as i32 * x[j + 16] as i32
                    } else {
                        byte as i32 * x[j] as i32
                    };
                }
                let d = scale(&tile[scales + 2 * r..]) * a.d[b];
                acc = (sum as f32).mul_add(d, acc);
            }
            *o = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// How many block pairs ahead a kernel asks for a tile's codes (9 KiB of Q4_0, 17 of Q8_0):
    /// on VNNI a Q4_0 batch of four or more positions, on AVX2 every one-tile pass where one
    /// stream alone is slow (two positions, or the last tiles of a range; one position reads four
    /// tiles at once there, unprefetched: [`tiles4_avx2`]).
    const PREFETCH_PAIRS: usize = 16;

    /// Four activation bytes at `x` in every 32-bit lane.
    #[inline(always)]
    unsafe fn quad(x: *const i8) -> i32 {
        // SAFETY: the caller points at four activations.
        unsafe { (x as *const i32).read_unaligned() }
    }

    /// [`tile_scalar`] on AVX-512 VNNI for up to 8 positions (`out.len()`).
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW, VNNI, FMA and F16C; `tile` holds `blocks` blocks, as
    /// every `acts[p]` does.
    pub(super) unsafe fn tile_vnni(
        q4: bool,
        tile: &[u8],
        blocks: usize,
        acts: &[HeadActs],
        out: &mut [[f32; TILE_ROWS]],
    ) {
        macro_rules! run {
            ($($p:literal)*) => {
                match (q4, acts.len()) {
                    $(
                        // SAFETY: the caller's promise.
                        (true, $p) => unsafe { tile_vnni_n::<true, $p>(tile, blocks, acts, out) },
                        (false, $p) => unsafe { tile_vnni_n::<false, $p>(tile, blocks, acts, out) },
                    )*
                    (_, n) => unreachable!("{n} positions in one pass"),
                }
            };
        }
        run!(1 2 3 4 5 6 7 8)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
    unsafe fn tile_vnni_n<const Q4: bool, const P: usize>(
        tile: &[u8],
        blocks: usize,
        acts: &[HeadActs],
        out: &mut [[f32; TILE_ROWS]],
    ) {
        assert!(tile.len() >= blocks.div_ceil(2) * pair_bytes(Q4) && acts.len() == P && out.len() == P);
        let mut acc = [_mm512_setzero_ps(); P];
        let x: [*const i8; P] = std::array::from_fn(|p| acts[p].q.as_ptr());
        let nibble = _mm512_set1_epi8(0x0F);
        let t = tile.as_ptr();
        for b in 0..blocks {
            let (scales, codes) = block_at(Q4, b);
            // Two sums per position, so no one chain of `vpdpbusd` sets the pace; exact either way.
            let mut lo: [__m512i; P] =
                std::array::from_fn(|p| _mm512_set1_epi32(code_offset(Q4, acts[p].sums[b])));
            let mut hi = [_mm512_setzero_si512(); P];
            // SAFETY (block): the block's scales and codes lie inside the tile (asserted above),
            // its activations inside every acts[p]; prefetches may point past the tile. One
            // position streams as fast without them (the hardware prefetcher follows).
            unsafe {
                if Q4 && P >= 4 && b % 2 == 0 {
                    // Four or more positions dwell on each Q4_0 pair longer than the hardware
                    // prefetcher waits for: asked for ahead, the codes arrive before they are
                    // needed (measured no help to Q8_0's larger pairs, nor to fewer positions).
                    let ahead = t.wrapping_add(scales + PREFETCH_PAIRS * pair_bytes(Q4));
                    for line in 0..pair_bytes(Q4) / 64 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
                    }
                }
                let c = t.add(codes);
                for g in 0..if Q4 { 4 } else { 8 } {
                    let line = c.add(64 * g);
                    let v = _mm512_loadu_si512(line as *const __m512i);
                    if Q4 {
                        let low = _mm512_and_si512(v, nibble);
                        let high = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
                        for p in 0..P {
                            let xp = x[p].add(32 * b + 4 * g);
                            lo[p] = _mm512_dpbusd_epi32(lo[p], low, _mm512_set1_epi32(quad(xp)));
                            hi[p] = _mm512_dpbusd_epi32(hi[p], high, _mm512_set1_epi32(quad(xp.add(16))));
                        }
                    } else {
                        for p in 0..P {
                            let xp = _mm512_set1_epi32(quad(x[p].add(32 * b + 4 * g)));
                            if g % 2 == 0 {
                                lo[p] = _mm512_dpbusd_epi32(lo[p], v, xp);
                            } else {
                                hi[p] = _mm512_dpbusd_epi32(hi[p], v, xp);
                            }
                        }
                    }
                }
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(t.add(scales) as *const __m256i));
                for p in 0..P {
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps(acts[p].d[b]));
                    let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(lo[p], hi[p]));
                    acc[p] = _mm512_fmadd_ps(sum, d, acc[p]);
                }
            }
        }
        for p in 0..P {
            // SAFETY: out[p] holds 16 f32.
            unsafe { _mm512_storeu_ps(out[p].as_mut_ptr(), acc[p]) };
        }
    }

    /// [`tile_scalar`] on AVX2 for up to 2 positions (`out.len()`), each tile as two halves of
    /// eight rows: Q4_0's codes through `maddubs` with the pair sums of a block's eight products
    /// per lane added in 16 bits (at most 8 · 2 · 15 · 127 = 30480), Q8_0's weights as
    /// |w| · sign(x, w) (pair sums at most 2 · 128 · 127).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `tile` holds `blocks` blocks, as every `acts[p]`.
    pub(super) unsafe fn tile_avx2(
        q4: bool,
        tile: &[u8],
        blocks: usize,
        acts: &[HeadActs],
        out: &mut [[f32; TILE_ROWS]],
    ) {
        // SAFETY: the caller's promise.
        unsafe {
            // Where one stream alone waits on memory (the CPUs that read four weight streams),
            // the tiles are asked for ahead (docs/performance-notes.md, "Quantised heads").
            let ahead = crate::cpu::weight_streams() == 4;
            match (q4, acts.len()) {
                (true, 1) => tile_avx2_n::<true, 1>(tile, blocks, acts, ahead, out),
                (true, 2) => tile_avx2_n::<true, 2>(tile, blocks, acts, ahead, out),
                (false, 1) => tile_avx2_n::<false, 1>(tile, blocks, acts, ahead, out),
                (false, 2) => tile_avx2_n::<false, 2>(tile, blocks, acts, ahead, out),
                (_, n) => unreachable!("{n} positions in one pass"),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_avx2_n<const Q4: bool, const P: usize>(
        tile: &[u8],
        blocks: usize,
        acts: &[HeadActs],
        ahead: bool,
        out: &mut [[f32; TILE_ROWS]],
    ) {
        assert!(tile.len() >= blocks.div_ceil(2) * pair_bytes(Q4) && acts.len() == P && out.len() == P);
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for b in 0..blocks {
            // SAFETY: block b lies inside the tile (asserted above) and inside every acts[p].
            unsafe {
                block_avx2::<Q4, P>(tile.as_ptr(), b, acts, if ahead { PREFETCH_PAIRS } else { 0 }, &mut acc)
            };
        }
        for p in 0..P {
            store_avx2(acc[p], &mut out[p]);
        }
    }

    /// [`tile_avx2`] for one position against four tiles in lock step, block by block: four
    /// forward streams, which a core that wants four weight streams (`cpu::weight_streams`) reads
    /// faster than one (docs/performance-notes.md, "Quantised heads"). Same arithmetic per row.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; every tile holds `blocks` blocks, as `act` does.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tiles4_avx2(
        q4: bool,
        tiles: [&[u8]; 4],
        blocks: usize,
        act: &HeadActs,
        out: [&mut [f32; TILE_ROWS]; 4],
    ) {
        // SAFETY: the caller's promise.
        unsafe {
            if q4 {
                tiles4_avx2_n::<true>(tiles, blocks, act, out)
            } else {
                tiles4_avx2_n::<false>(tiles, blocks, act, out)
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tiles4_avx2_n<const Q4: bool>(
        tiles: [&[u8]; 4],
        blocks: usize,
        act: &HeadActs,
        out: [&mut [f32; TILE_ROWS]; 4],
    ) {
        assert!(tiles.iter().all(|t| t.len() >= blocks.div_ceil(2) * pair_bytes(Q4)));
        let acts = std::slice::from_ref(act);
        let mut acc = [[[_mm256_setzero_ps(); 2]; 1]; 4];
        for b in 0..blocks {
            for (tile, acc) in tiles.iter().zip(acc.iter_mut()) {
                // SAFETY: block b lies inside every tile (asserted above) and inside act.
                unsafe { block_avx2::<Q4, 1>(tile.as_ptr(), b, acts, 0, acc) };
            }
        }
        for (acc, out) in acc.into_iter().zip(out) {
            store_avx2(acc[0], out);
        }
    }

    /// A tile's 16 sums from their two halves of eight.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store_avx2(acc: [__m256; 2], out: &mut [f32; TILE_ROWS]) {
        // SAFETY: out holds 16 f32.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
        }
    }

    /// Block `b` of the tile at `t` against `P` positions, into `acc` (rows 0-7, 8-15 of each).
    /// Always inlined into its AVX2 callers (a `target_feature` function cannot be
    /// `inline(always)`, and a call per block would cost more than the block).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; block `b` lies inside the tile at `t` and inside
    /// every `acts[p]`, `acts.len() == P`.
    // Indexed loops over positions and halves: the accumulators are arrays the compiler keeps in
    // registers, which iterators over them can defeat.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn block_avx2<const Q4: bool, const P: usize>(
        t: *const u8,
        b: usize,
        acts: &[HeadActs],
        ahead: usize,
        acc: &mut [[__m256; 2]; P],
    ) {
        let x: [*const i8; P] = std::array::from_fn(|p| acts[p].q.as_ptr());
        let (scales, codes) = block_at(Q4, b);
        // SAFETY: the caller's promise.
        unsafe {
            let (nibble, ones, top) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1), _mm256_set1_epi8(-128));
            let mut sums = [[_mm256_setzero_si256(); 2]; P];
            if ahead > 0 && b.is_multiple_of(2) {
                let at = t.wrapping_add(scales + ahead * pair_bytes(Q4));
                for line in 0..pair_bytes(Q4) / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64 * line) as *const i8);
                }
            }
            let c = t.add(codes);
            for g in 0..if Q4 { 4 } else { 8 } {
                for h in 0..2 {
                    let v = _mm256_loadu_si256(c.add(64 * g + 32 * h) as *const __m256i);
                    if Q4 {
                        let low = _mm256_and_si256(v, nibble);
                        let high = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble);
                        for p in 0..P {
                            let xp = x[p].add(32 * b + 4 * g);
                            let l = _mm256_maddubs_epi16(low, _mm256_set1_epi32(quad(xp)));
                            let u = _mm256_maddubs_epi16(high, _mm256_set1_epi32(quad(xp.add(16))));
                            sums[p][h] = _mm256_add_epi16(sums[p][h], _mm256_add_epi16(l, u));
                        }
                    } else {
                        let w = _mm256_xor_si256(v, top);
                        let magnitude = _mm256_abs_epi8(w);
                        for p in 0..P {
                            let xp = _mm256_set1_epi32(quad(x[p].add(32 * b + 4 * g)));
                            let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xp, w));
                            sums[p][h] = _mm256_add_epi32(sums[p][h], _mm256_madd_epi16(pairs, ones));
                        }
                    }
                }
            }
            for h in 0..2 {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(t.add(scales + 16 * h) as *const __m128i));
                for p in 0..P {
                    let sum = if Q4 {
                        let offset = _mm256_set1_epi32(code_offset(true, acts[p].sums[b]));
                        _mm256_add_epi32(_mm256_madd_epi16(sums[p][h], ones), offset)
                    } else {
                        sums[p][h]
                    };
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(acts[p].d[b]));
                    acc[p][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc[p][h]);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use std::arch::aarch64::*;

    /// [`tile_scalar`] on NEON for one position, the tile's rows four per 16-byte load: Q4_0's
    /// products of a block added per lane in 16 bits (at most 8 · 15 · 127), Q8_0's widened in
    /// pairs to 32 bits; then the lanes of each row added.
    pub(super) fn tile_neon(q4: bool, tile: &[u8], blocks: usize, a: &HeadActs, out: &mut [f32; TILE_ROWS]) {
        assert!(tile.len() >= blocks.div_ceil(2) * pair_bytes(q4) && a.blocks() == blocks);
        // SAFETY: NEON is part of aarch64; the sizes are asserted above.
        unsafe { tile_neon_unchecked(q4, tile, blocks, a, out) }
    }

    #[target_feature(enable = "neon")]
    unsafe fn tile_neon_unchecked(
        q4: bool,
        tile: &[u8],
        blocks: usize,
        a: &HeadActs,
        out: &mut [f32; TILE_ROWS],
    ) {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let t = tile.as_ptr();
        for b in 0..blocks {
            let (scales, codes) = block_at(q4, b);
            // SAFETY (block): the block's codes lie inside the tile, its activations inside `a`.
            let rows: [int32x4_t; 4] = unsafe {
                let c = t.add(codes);
                let x = a.q.as_ptr().add(32 * b);
                let quad =
                    |at: usize| vreinterpret_s8_u32(vdup_n_u32((x.add(at) as *const u32).read_unaligned()));
                if q4 {
                    let mut s = [[vdupq_n_s16(0); 2]; 4];
                    for g in 0..4 {
                        let (xl, xh) = (quad(4 * g), quad(16 + 4 * g));
                        for (k, s) in s.iter_mut().enumerate() {
                            let v = vld1q_u8(c.add(64 * g + 16 * k));
                            let low = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
                            let high = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                            s[0] = vmlal_s8(s[0], vget_low_s8(low), xl);
                            s[1] = vmlal_s8(s[1], vget_high_s8(low), xl);
                            s[0] = vmlal_s8(s[0], vget_low_s8(high), xh);
                            s[1] = vmlal_s8(s[1], vget_high_s8(high), xh);
                        }
                    }
                    let offset = vdupq_n_s32(code_offset(true, a.sums[b]));
                    s.map(|s| vaddq_s32(vpaddq_s32(vpaddlq_s16(s[0]), vpaddlq_s16(s[1])), offset))
                } else {
                    let mut s = [[vdupq_n_s32(0); 2]; 4];
                    for g in 0..8 {
                        let xq = quad(4 * g);
                        for (k, s) in s.iter_mut().enumerate() {
                            let w = vreinterpretq_s8_u8(veorq_u8(
                                vld1q_u8(c.add(64 * g + 16 * k)),
                                vdupq_n_u8(0x80),
                            ));
                            s[0] = vpadalq_s16(s[0], vmull_s8(vget_low_s8(w), xq));
                            s[1] = vpadalq_s16(s[1], vmull_s8(vget_high_s8(w), xq));
                        }
                    }
                    s.map(|s| vpaddq_s32(s[0], s[1]))
                }
            };
            let d: [f32; TILE_ROWS] = std::array::from_fn(|r| scale(&tile[scales + 2 * r..]) * a.d[b]);
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: d holds 16 f32.
                let dk = unsafe { vld1q_f32(d.as_ptr().add(4 * k)) };
                *acc = vfmaq_f32(*acc, vcvtq_f32_s32(rows[k]), dk);
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            // SAFETY: out holds 16 f32.
            unsafe { vst1q_f32(out.as_mut_ptr().add(4 * k), *acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_formats::float_blocks::quantize_row;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The head's arithmetic (module docs) straight from a row of the file's bytes: the
    /// independent reference the tiles are checked against.
    fn dot_row(ty: TensorType, row: &[u8], acts: &HeadActs) -> f32 {
        let block = block_bytes(ty).unwrap();
        let mut acc = 0f32;
        for (b, blk) in row.chunks_exact(block).enumerate() {
            let w: Vec<i32> = if ty == TensorType::Q4_0 {
                let low = blk[2..18].iter().map(|&c| (c & 0xF) as i32 - 8);
                low.chain(blk[2..18].iter().map(|&c| (c >> 4) as i32 - 8)).collect()
            } else {
                blk[2..34].iter().map(|&c| c as i8 as i32).collect()
            };
            let sum: i32 = w.iter().zip(&acts.q[32 * b..32 * b + 32]).map(|(&w, &x)| w * x as i32).sum();
            acc = (sum as f32).mul_add(scale(blk) * acts.d[b], acc);
        }
        acc
    }

    /// `rows` random rows of `ty` (some with extreme values) and `n` positions.
    fn case(ty: TensorType, rows: usize, cols: usize, n: usize, seed: &mut u64) -> (Vec<u8>, Vec<HeadActs>) {
        let mut bytes = Vec::new();
        for r in 0..rows {
            let mut v: Vec<f32> = (0..cols).map(|_| lcg(seed) * (1 + r % 5) as f32).collect();
            if r % 3 == 0 {
                v[0] = 40.0; // one large weight: the rest of its block quantise to small codes
            }
            quantize_row(ty, &v, &mut bytes).unwrap();
        }
        let acts = (0..n)
            .map(|p| {
                let mut x: Vec<f32> = (0..cols).map(|_| lcg(seed) * 3.0).collect();
                if p % 2 == 1 {
                    x[..32].iter_mut().for_each(|v| *v = -v.abs() - 1.0); // a block at -127
                }
                HeadActs::quantise(&x)
            })
            .collect();
        (bytes, acts)
    }

    fn kernels() -> Vec<Kernel> {
        let mut all: Vec<Kernel> = crate::cpu::available().into_iter().map(Kernel::for_isa).collect();
        all.dedup();
        all
    }

    /// Every kernel this CPU runs gives the bits of the scalar twin, and the twin gives the
    /// bits of the file-row reference, on awkward shapes: partial tiles, odd block counts,
    /// one to nine positions, a start past the first tile, tiles one at a time and (AVX2, one
    /// position, four tiles or more) four at once.
    #[test]
    fn every_kernel_matches_the_file_rows_bit_for_bit() {
        let mut seed = 7;
        for ty in [TensorType::Q4_0, TensorType::Q8_0] {
            for (rows, cols) in
                [(1, 32), (15, 64), (16, 96), (17, 160), (40, 2560), (33, 320), (70, 96), (137, 160)]
            {
                for n in [1, 2, 3, 8, 9] {
                    let (bytes, acts) = case(ty, rows, cols, n, &mut seed);
                    let tiles = HeadTiles::pack(ty, &bytes, rows, cols).unwrap();
                    let row_bytes = bytes.len() / rows;
                    let want: Vec<f32> = (0..rows)
                        .flat_map(|r| acts.iter().map(move |a| (r, a)))
                        .map(|(r, a)| dot_row(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], a))
                        .collect();
                    for (kernel, four) in kernels().into_iter().flat_map(|k| [(k, false), (k, true)]) {
                        for first in [0, 16].into_iter().filter(|&f| f < rows) {
                            let mut got = vec![f32::NAN; (rows - first) * n];
                            dot_rows_streams(kernel, &tiles, first, &acts, &mut got, four);
                            for (i, (g, w)) in got.iter().zip(&want[first * n..]).enumerate() {
                                assert_eq!(
                                    g.to_bits(),
                                    w.to_bits(),
                                    "{ty} {kernel:?} (four streams: {four}) {rows}x{cols} n={n} first={first}: row {} position {}",
                                    first + i / n,
                                    i % n
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A hand-computed case: one Q4_0 row, scale 0.5, every weight +1 (code 9), against 32
    /// activations of 1.0 (quantised to 127 with d = 1/127): 32 · 127 · 0.5 / 127 = 16.
    #[test]
    fn hand_computed_q4_0_row() {
        let mut row = f16::from_f32(0.5).to_le_bytes().to_vec();
        row.extend([0x99u8; 16]);
        let tiles = HeadTiles::pack(TensorType::Q4_0, &row, 1, 32).unwrap();
        let acts = [HeadActs::quantise(&[1.0; 32])];
        assert_eq!(acts[0].q, vec![127i8; 32]);
        for kernel in kernels() {
            let mut got = [0f32];
            dot_rows(kernel, &tiles, 0, &acts, &mut got);
            assert!((got[0] - 16.0).abs() < 1e-5, "{kernel:?}: {}", got[0]);
        }
    }

    /// The tiles' bytes are the file's: a packed tile reads back every row's scales and codes.
    #[test]
    fn tiles_hold_every_byte_of_the_rows() {
        let mut seed = 3;
        for ty in [TensorType::Q4_0, TensorType::Q8_0] {
            let (bytes, _) = case(ty, 19, 96, 1, &mut seed);
            let tiles = HeadTiles::pack(ty, &bytes, 19, 96).unwrap();
            let q4 = ty == TensorType::Q4_0;
            let block = block_bytes(ty).unwrap();
            for (r, row) in bytes.chunks_exact(3 * block).enumerate() {
                let tile = tiles.tile(r / TILE_ROWS);
                for (b, blk) in row.chunks_exact(block).enumerate() {
                    let (scales, codes) = block_at(q4, b);
                    let (r16, x) = (r % TILE_ROWS, if q4 { 0 } else { 0x80 });
                    assert_eq!(tile[scales + 2 * r16..scales + 2 * r16 + 2], blk[..2]);
                    for (j, &c) in blk[2..].iter().enumerate() {
                        assert_eq!(
                            tile[codes + 64 * (j / 4) + 4 * r16 + j % 4] ^ x,
                            c,
                            "{ty} row {r} block {b}"
                        );
                    }
                }
            }
        }
    }
}
