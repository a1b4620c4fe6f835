//! The AVX2 I2_S prompt GEMM by table lookup, for x86 CPUs without VNNI.
//!
//! AVX2 has no instruction that multiplies int8 into int32 in one step: the `maddubs` GEMM
//! (`x86::gemm_unpacked_rows`) spends a `maddubs` and an add on every 32 products, and with
//! three vector ports that is its ceiling. Here the multiplications disappear instead. A byte of
//! an I2_S block holds four weights (columns p, 32+p, 64+p, 96+p of the block); for a chunk of
//! tokens, a table holds for each of the 81 values that byte can take the four weights' sum
//! Σ t·q over those columns, for every token of the chunk, as vectors of sixteen i16. A row's
//! block is then 32 lookups: a scalar load of the weight byte and one vector add per sixteen
//! tokens straight from the table, with no decoding of the weights at all. For 32 tokens that
//! is 128 multiply-accumulates per three loads and two adds.
//!
//! The activations are laid out once per input as [`Columns`] (each column's tokens side by
//! side, as i16), shared by every call, thread and matrix that reads the input. The table is
//! built from them once per block and chunk of tokens and then serves every row of the call
//! (32 groups × 81 entries × 64 bytes = 162 KiB for 32 tokens, resident in L2), so a call
//! should bring many rows, or building and laying out the tables dominates
//! (docs/performance-notes.md, "Prompt GEMM"). The table is indexed by the raw byte, so its
//! slots of the invalid code 3, which readers reject (`formats::i2s`), are never written and
//! read zero.
//!
//! Exact: an entry is at most 4·128 = 512 in magnitude, a block's 32 of them at most 16384, so
//! the i16 sums never wrap before each block is widened into the i32 accumulators.

use crate::pages::HugeZeroed;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Tokens from which the prompt GEMM runs on tables: fewer leave too much of a 16-token chunk
/// empty, and the `maddubs` GEMM was faster (`gemm_probe`; docs/performance-notes.md, "Prompt GEMM").
pub(super) const MIN_TOKENS: usize = 24;
/// Tokens per chunk of the tables: two vectors of sixteen i16 per slot.
const CHUNK_TOKENS: usize = super::LOOKUP_CHUNK_TOKENS;
/// Bytes (groups of four weights) per I2_S block.
const GROUPS: usize = 32;
/// How many rows ahead a block pass asks for the weight bytes it will read. The pass reads 32
/// bytes of each row, a row apart; on long rows (down's 1728 bytes) that is a couple of reads
/// per 4 KiB page, too few for the hardware prefetcher, which never crosses a page (`gemm_probe`;
/// docs/performance-notes.md, "Prompt GEMM").
const ROWS_AHEAD: usize = 16;

/// Rows that share one table per block and chunk of tokens. Their i32 sums (128 bytes a row for
/// 32 tokens) are read and written once per block, beside the table's random reads: gate's
/// 6912 rows in one band keep 864 KiB of sums live, so two bands of 3456 run faster despite
/// building every table twice, while shorter bands lose again (`gemm_probe`;
/// docs/performance-notes.md, "Prompt GEMM").
pub(super) const BAND_ROWS: usize = 3584;

/// Vectors from one group's slots to the next: 256 slots of `halves` vectors, and one 64-byte
/// line more, so that slot b of consecutive groups falls in neighbouring L1 sets. At exactly
/// 256 slots every group's slot b shared one set, only 27 of the 64 sets held valid slots, and
/// the table thrashed the L1 it had.
const fn group_stride(halves: usize) -> usize {
    256 * halves + 2
}

thread_local! {
    /// This thread's tables for 16- and 32-token chunks, zeroed once (only valid slots are
    /// ever written), in 2 MiB pages where the OS grants them: the table's random reads are
    /// served from L2, and in 4 KiB pages a process could get physical pages that crowd its
    /// lines into too few L2 sets (`pages::HugeZeroed`).
    static TABLES: RefCell<[Option<HugeZeroed<__m256i>>; 2]> = const { RefCell::new([None, None]) };
}

/// One chunk of a prompt's tokens laid out for table building: `data[c·halves + h]` holds
/// activation column c of tokens `first + 16h ..` as sixteen i16 (zero past the chunk's end).
struct Chunk {
    first: usize,
    tokens: usize,
    halves: usize,
    data: Vec<__m256i>,
}

/// A prompt's activations as columns of tokens, in chunks of 32 tokens (a last one of at most
/// 16 takes 16), built once per input.
pub struct Columns {
    chunks: Vec<Chunk>,
    tokens: usize,
    k: usize,
}

impl Columns {
    /// `acts`: `tokens` rows of `k` activations, `k` a multiple of 16. Needs AVX2.
    pub fn new(acts: &[i8], tokens: usize, k: usize) -> Columns {
        use rayon::prelude::*;
        assert!(acts.len() == tokens * k && k.is_multiple_of(16));
        assert!(is_x86_feature_detected!("avx2"), "the lookup GEMM's columns need AVX2");
        // SAFETY: AVX2 was asserted just above.
        let zero = unsafe { _mm256_setzero_si256() };
        let chunks = (0..tokens)
            .into_par_iter()
            .step_by(CHUNK_TOKENS)
            .map(|first| {
                let n = (tokens - first).min(CHUNK_TOKENS);
                let halves = n.div_ceil(16);
                let mut data = vec![zero; k * halves];
                for h in 0..halves {
                    let t0 = first + 16 * h;
                    let group = &acts[t0 * k..(first + n).min(t0 + 16) * k];
                    // SAFETY: AVX2 was asserted; the group holds whole tokens of k, and data k
                    // columns of `halves` vectors.
                    unsafe { transpose_group(group, k, &mut data, halves, h) };
                }
                Chunk { first, tokens: n, halves, data }
            })
            .collect();
        Columns { chunks, tokens, k }
    }

    pub fn fits(&self, tokens: usize, k: usize) -> bool {
        (self.tokens, self.k) == (tokens, k)
    }
}

/// Lays up to sixteen tokens (`group`, whole tokens of `k`) out as half `h` of every column of
/// `data`: 16 × 16 blocks of bytes transposed in registers, then widened to i16 (missing tokens
/// read zero).
///
/// # Safety
/// The CPU must support AVX2; `k` a multiple of 16; `data` holds `k · halves` vectors, h < halves.
#[target_feature(enable = "avx2")]
unsafe fn transpose_group(group: &[i8], k: usize, data: &mut [__m256i], halves: usize, h: usize) {
    let n = group.len() / k;
    assert!(n <= 16 && data.len() == k * halves && h < halves);
    for c0 in (0..k).step_by(16) {
        let mut v = [_mm_setzero_si128(); 16];
        for (i, v) in v.iter_mut().take(n).enumerate() {
            // SAFETY: sixteen bytes from column c0 of token i, within the group.
            *v = unsafe { _mm_loadu_si128(group.as_ptr().add(i * k + c0) as *const __m128i) };
        }
        // Four rounds of interleaving the first eight registers with the last eight: each round
        // moves one bit of the token index into the byte position, so after four v[j] holds
        // column c0 + j of tokens 0..16.
        for _ in 0..4 {
            let mut w = [_mm_setzero_si128(); 16];
            for i in 0..8 {
                w[2 * i] = _mm_unpacklo_epi8(v[i], v[i + 8]);
                w[2 * i + 1] = _mm_unpackhi_epi8(v[i], v[i + 8]);
            }
            v = w;
        }
        for (j, v) in v.iter().enumerate() {
            data[(c0 + j) * halves + h] = _mm256_cvtepi8_epi16(*v);
        }
    }
}

/// `out[r·tokens + t] = Σ t[r]·q[t]` for every row of `rows` (each `row_bytes`) and token of
/// `columns`, by table lookup.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemm(rows: &[u8], row_bytes: usize, columns: &Columns, out: &mut [i32]) {
    let (k, tokens) = (columns.k, columns.tokens);
    let n_rows = rows.len() / row_bytes;
    assert!(row_bytes * 4 == k && rows.len() == n_rows * row_bytes && out.len() == n_rows * tokens);
    TABLES.with_borrow_mut(|tables| {
        for chunk in &columns.chunks {
            let table = tables[chunk.halves - 1].get_or_insert_with(|| {
                let len = GROUPS * group_stride(chunk.halves);
                // SAFETY: zero bytes are the zero vector.
                unsafe { HugeZeroed::new(len, _mm256_setzero_si256()) }
            });
            let table = table.as_mut_slice();
            // Equal bands of at most BAND_ROWS rows, each with its own tables.
            let band = n_rows.div_ceil(n_rows.div_ceil(BAND_ROWS).max(1)).max(1);
            for (rows, out) in rows.chunks(band * row_bytes).zip(out.chunks_mut(band * tokens)) {
                // SAFETY: AVX2 (the caller's contract); sizes asserted above, and each band is
                // whole rows with their outputs.
                unsafe {
                    match chunk.halves {
                        2 => gemm_chunk::<2>(rows, row_bytes, chunk, table, out, tokens),
                        _ => gemm_chunk::<1>(rows, row_bytes, chunk, table, out, tokens),
                    }
                }
            }
        }
    });
}

/// The rows against one chunk of `H` half-chunks of sixteen tokens.
///
/// # Safety
/// The CPU must support AVX2; `row_bytes` a multiple of 32 with `chunk.data` holding
/// `row_bytes · 4` columns of `H` vectors; `table` `GROUPS · group_stride(H)` vectors;
/// `out[r·tokens + chunk.first ..][..chunk.tokens]` in bounds for every row.
#[target_feature(enable = "avx2")]
unsafe fn gemm_chunk<const H: usize>(
    rows: &[u8],
    row_bytes: usize,
    chunk: &Chunk,
    table: &mut [__m256i],
    out: &mut [i32],
    tokens: usize,
) {
    let n_rows = rows.len() / row_bytes;
    let mut acc = vec![_mm256_setzero_si256(); n_rows * 2 * H];
    for block in 0..row_bytes / 32 {
        // SAFETY: the block's 128 columns of H vectors are in chunk.data; the table as the
        // contract says; each row holds the block's 32 bytes; acc 2H vectors per row.
        unsafe {
            build_table::<H>(&chunk.data[block * 128 * H..(block + 1) * 128 * H], table);
            for (r, acc) in acc.chunks_exact_mut(2 * H).enumerate() {
                let w = rows.as_ptr().add(r * row_bytes + block * 32);
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(ROWS_AHEAD * row_bytes) as *const i8);
                add_block::<H>(w, table.as_ptr(), acc);
            }
        }
    }
    for (r, acc) in acc.chunks_exact(2 * H).enumerate() {
        let mut sums = [0i32; CHUNK_TOKENS];
        for (i, v) in acc.iter().enumerate() {
            // SAFETY: 2H ≤ 4 vectors of eight i32 within the 32 sums.
            unsafe { _mm256_storeu_si256(sums.as_mut_ptr().add(8 * i) as *mut __m256i, *v) };
        }
        let at = r * tokens + chunk.first;
        out[at..at + chunk.tokens].copy_from_slice(&sums[..chunk.tokens]);
    }
}

/// Fills the 81 valid slots of each of the block's 32 groups from its 128 columns: slot
/// `a<<6 | b<<4 | c<<2 | d` of group p holds (a−1)·x[p] + (b−1)·x[32+p] + (c−1)·x[64+p] +
/// (d−1)·x[96+p] for codes a, b, c, d ∈ {0, 1, 2} (bits 7-6 of a byte are column p).
///
/// # Safety
/// The CPU must support AVX2; `columns` holds 128 columns of `H` vectors; `table`
/// `GROUPS · group_stride(H)` vectors.
#[target_feature(enable = "avx2")]
unsafe fn build_table<const H: usize>(columns: &[__m256i], table: &mut [__m256i]) {
    assert!(columns.len() == 128 * H && table.len() >= GROUPS * group_stride(H));
    let zero = _mm256_setzero_si256();
    let t = table.as_mut_ptr();
    for p in 0..GROUPS {
        for h in 0..H {
            let x = |j: usize| columns[(32 * j + p) * H + h];
            let terms = |v: __m256i| [_mm256_sub_epi16(zero, v), zero, v];
            let (ta, tb, tc, td) = (terms(x(0)), terms(x(1)), terms(x(2)), terms(x(3)));
            let mut low = [zero; 9];
            for c in 0..3 {
                for d in 0..3 {
                    low[3 * c + d] = _mm256_add_epi16(tc[c], td[d]);
                }
            }
            for (a, &ta) in ta.iter().enumerate() {
                for (b, &tb) in tb.iter().enumerate() {
                    let high = _mm256_add_epi16(ta, tb);
                    let base = p * group_stride(H) + (a << 6 | b << 4) * H + h;
                    for c in 0..3 {
                        for d in 0..3 {
                            // SAFETY: slot ≤ 0b10101010 < 256 of group p < GROUPS, in bounds
                            // (asserted above).
                            unsafe {
                                *t.add(base + (c << 2 | d) * H) = _mm256_add_epi16(high, low[3 * c + d])
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Adds one row's block (32 bytes at `w`) to its 2H i32 accumulators: 32 lookups summed in
/// i16, then widened.
///
/// # Safety
/// The CPU must support AVX2; `w` points at 32 readable bytes; `table` at a built table of
/// `GROUPS · group_stride(H)` vectors; `acc` holds 2H vectors.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn add_block<const H: usize>(w: *const u8, table: *const __m256i, acc: &mut [__m256i]) {
    let mut s = [_mm256_setzero_si256(); H];
    for p in 0..GROUPS {
        // SAFETY: byte p of the block, and its slot of group p, in bounds per the contract.
        unsafe {
            let slot = table.add(p * group_stride(H) + *w.add(p) as usize * H);
            for (h, s) in s.iter_mut().enumerate() {
                *s = _mm256_add_epi16(*s, _mm256_load_si256(slot.add(h)));
            }
        }
    }
    for (h, s) in s.into_iter().enumerate() {
        let low = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s));
        let high = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(s));
        acc[2 * h] = _mm256_add_epi32(acc[2 * h], low);
        acc[2 * h + 1] = _mm256_add_epi32(acc[2 * h + 1], high);
    }
}
