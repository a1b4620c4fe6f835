//! BitLinear on the runtime's kernels: each token's input quantised to int8 exactly as the
//! reference does ([`QuantBatch`], with the lookup tables and prompt panels built from it once
//! and shared by the matrices that read the same input), the exact integer product on the
//! layout's kernel, then one scale β / s per token. One token runs on the session's team; a
//! prompt's rows or token spans on rayon.

use super::forward::Session;
use super::profile::Op;
use super::weights::TernaryMatrix;
use crate::cpu::Isa;
use crate::kernels::{act, layouts};
use rayon::prelude::*;
use std::ops::Range;
use tern_formats::Layout;

/// Quantised activations of several tokens, padded per token to the matrix's padded width.
pub(super) struct QuantBatch {
    codes: AlignedCodes,
    scales: Vec<f32>,
    sums: Vec<i32>,
    padded: usize,
    /// Lookup tables built from these activations, kept for the next matrix of the same kind
    /// (q/k/v and gate/up read one input).
    tables: Vec<layouts::Tables>,
    /// These activations laid out for the prompt GEMM (AMX tiles, lookup columns), built on
    /// first use by a product that reads them and kept for the next matrices of this input.
    panel: Option<layouts::Panel>,
    /// When a product splits the prompt by tokens (`layouts::token_spans`): the spans, and each
    /// one's own panel (none where a span is too short to read one).
    spans: Vec<(Range<usize>, Option<layouts::Panel>)>,
}

impl QuantBatch {
    pub(super) fn new(isa: Isa, x: &[f32], width: usize, padded: usize) -> QuantBatch {
        let tokens = x.len() / width;
        let mut codes = AlignedCodes::zeroed(tokens * padded);
        let quantise = |(row, out): (&[f32], &mut [i8])| act::quantise(isa, row, out);
        // A prompt's tokens across threads; one token (generation) is not worth a fork-join.
        let per_token: Vec<(f32, i32)> = if tokens > 1 {
            x.par_chunks_exact(width)
                .zip(codes.as_mut_slice().par_chunks_exact_mut(padded))
                .map(quantise)
                .collect()
        } else {
            x.chunks_exact(width).zip(codes.as_mut_slice().chunks_exact_mut(padded)).map(quantise).collect()
        };
        let (scales, sums) = per_token.into_iter().unzip();
        QuantBatch { codes, scales, sums, padded, tables: Vec::new(), panel: None, spans: Vec::new() }
    }

    /// The same codes with each token padded to `padded` instead (the first `width` are real).
    fn repad(&self, width: usize, padded: usize) -> QuantBatch {
        let mut codes = AlignedCodes::zeroed(self.tokens() * padded);
        for (dst, src) in
            codes.as_mut_slice().chunks_exact_mut(padded).zip(self.codes.as_slice().chunks_exact(self.padded))
        {
            dst[..width].copy_from_slice(&src[..width]);
        }
        QuantBatch {
            codes,
            scales: self.scales.clone(),
            sums: self.sums.clone(),
            padded,
            tables: Vec::new(),
            panel: None,
            spans: Vec::new(),
        }
    }

    /// The tables of kind `key` over these activations, built on first use.
    fn tables(&mut self, key: layouts::TableKey) -> &layouts::Tables {
        match self.tables.iter().position(|t| t.key == key) {
            Some(i) => &self.tables[i],
            None => {
                self.tables.push(layouts::Tables::build(key, self.codes.as_slice(), self.padded));
                self.tables.last().expect("just pushed")
            }
        }
    }

    /// Lays these activations out for the prompt GEMM if a product of `layout` on `isa` reads
    /// them so (`layouts::panel`).
    fn prepare_panel(&mut self, isa: Isa, layout: Layout) {
        if let Some(spans) = layouts::token_spans(isa, layout, self.tokens()) {
            if self.spans.is_empty() {
                let k = self.padded;
                let codes = self.codes.as_slice();
                self.spans = spans
                    .into_iter()
                    .map(|t| {
                        let panel = layouts::panel(
                            isa,
                            layout,
                            &codes[t.start * k..t.end * k],
                            &self.sums[t.clone()],
                            k,
                        );
                        (t, panel)
                    })
                    .collect();
            }
        } else if self.panel.is_none() {
            self.panel = layouts::panel(isa, layout, self.codes.as_slice(), &self.sums, self.padded);
        }
    }

    fn tokens(&self) -> usize {
        self.scales.len()
    }
}

/// Rows of a prompt's BitLinear sums scaled into the token-major output together: 64 rows of
/// 128 tokens are 32 KiB of i32, within L1.
const SCALE_BAND_ROWS: usize = 64;

/// The token-major output of a prompt's BitLinear, shared by the tasks that each write their
/// own rows of every token.
struct TokenMajor(*mut f32);

// SAFETY: the tasks write disjoint elements (see the use in `bitlinear`).
unsafe impl Send for TokenMajor {}
unsafe impl Sync for TokenMajor {}

impl TokenMajor {
    /// Scales one task's row-major sums (`acc[(r − rows.start)·n + j]` for the rows `rows` and
    /// the n tokens `tokens`) into the output of `width` rows per token, `factors[t]` per token.
    /// A band of [`SCALE_BAND_ROWS`] rows at a time, so the band's sums stay in L1 while every
    /// token takes its row of them: a task's whole product (3.5 MB for gate with the lookup
    /// GEMM's long calls) read token by token missed the cache on every read
    /// (docs/performance-notes.md, "Prompt GEMM").
    ///
    /// # Safety
    /// The output holds `width` floats for every token of `tokens`, and no other thread writes
    /// these rows of these tokens while this runs.
    unsafe fn scale_in(
        &self,
        width: usize,
        rows: Range<usize>,
        tokens: Range<usize>,
        acc: &[i32],
        factors: &[f32],
    ) {
        let n = tokens.len();
        assert_eq!(acc.len(), rows.len() * n);
        for band in rows.clone().step_by(SCALE_BAND_ROWS) {
            let b = SCALE_BAND_ROWS.min(rows.end - band);
            let sums = &acc[(band - rows.start) * n..(band - rows.start + b) * n];
            for (j, (t, &f)) in tokens.clone().zip(&factors[tokens.clone()]).enumerate() {
                // SAFETY: the caller's contract; band..band + b lies within `rows`.
                let out = unsafe { std::slice::from_raw_parts_mut(self.0.wrapping_add(t * width + band), b) };
                for (o, slots) in out.iter_mut().zip(sums.chunks_exact(n)) {
                    *o = slots[j] as f32 * f;
                }
            }
        }
    }
}

/// int8 codes starting on a 64-byte boundary, so a kernel's 32-byte activation loads never
/// straddle two cache lines. Left to `malloc`'s 16-byte alignment, half of them did whenever the
/// buffer began 16 bytes past a line, which slowed the I2_S GEMV (`runtime/examples/gemv_probe.rs`,
/// `SKEW=16`; docs/performance-notes.md, "Activation quantisation").
struct AlignedCodes {
    buf: Vec<i8>,
    start: usize,
    len: usize,
}

impl AlignedCodes {
    fn zeroed(len: usize) -> AlignedCodes {
        let buf = vec![0i8; len + 63];
        // A byte pointer can always be aligned; the heap buffer does not move with the Vec.
        let start = buf.as_ptr().align_offset(64);
        AlignedCodes { buf, start, len }
    }

    fn as_slice(&self) -> &[i8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [i8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl Session<'_> {
    /// One BitLinear: `x` `[T, cols]` → `[T, rows]` (quantise per token, integer GEMM, × β/s).
    pub fn project(&self, m: &TernaryMatrix, x: &[f32]) -> Vec<f32> {
        let mut a = self.time(Op::Quantise, || QuantBatch::new(self.isa, x, m.cols, m.padded_cols()));
        self.bitlinear(m, &mut a)
    }

    /// `[T, cols]` quantised → `[T, rows]` f32: exact integer dots, then × β / s per token.
    pub(super) fn bitlinear(&self, m: &TernaryMatrix, a: &mut QuantBatch) -> Vec<f32> {
        if a.padded != m.padded_cols() {
            // Matrices sharing an input can differ in padding when the converter fell back to
            // I2_S (128-weight blocks) for some of them: re-pad the same codes for this one.
            let mut repadded = a.repad(m.cols, m.padded_cols());
            return self.bitlinear(m, &mut repadded);
        }
        let tokens = a.tokens();
        if tokens == 0 {
            return Vec::new();
        }
        let w = self.model.packed(m);
        let isa = self.isa;
        // Lookup-table layouts: tables built once per input, shared by threads and matrices.
        if let Some(key) = w.tables_read(isa, tokens) {
            self.time(Op::Tables, || {
                a.tables(key);
            });
        }
        if tokens > 1 {
            self.time(Op::Tables, || a.prepare_panel(isa, w.layout));
        }
        let a = &*a;
        let tables = w.tables_read(isa, tokens).and_then(|key| a.tables.iter().find(|t| t.key == key));
        // Row chunks: enough for every thread to get several, large enough to amortise the task,
        // and whole row groups (tiled layouts store BM rows together). Chunks only balance
        // threads, so one thread generating takes the whole matrix in one call: the quarter-stream
        // GEMV needs long streams (docs/performance-notes.md, "Row chunks"). A prompt keeps its
        // chunks even then: each chunk's output is scaled while it is in the cache.
        let group = w.row_group();
        let threads = if tokens == 1 { self.team.threads() } else { rayon::current_num_threads() };
        let chunk_rows = if threads == 1 && tokens == 1 {
            m.rows
        } else if tokens == 1 && w.generates_in_one_part(isa) {
            // Generating, each thread takes one unbroken part of the matrix in one call.
            m.rows.div_ceil(threads).next_multiple_of(group).min(m.rows)
        } else if layouts::wants_long_calls(isa, w.layout, tokens) {
            // The AVX2 lookup GEMM builds its tables once per call, so short calls spend much of
            // their time building them and each thread takes one part (docs/performance-notes.md,
            // "Prompt GEMM").
            m.rows.div_ceil(threads).next_multiple_of(group).min(m.rows)
        } else {
            (m.rows / (threads * 4)).clamp(16, 256).next_multiple_of(group).min(m.rows)
        };
        let started = std::time::Instant::now();
        let factors: Vec<f32> = a.scales.iter().map(|&s| m.scale / s).collect();
        let mut y = vec![0f32; tokens * m.rows];
        let acts =
            || layouts::Acts { codes: a.codes.as_slice(), sums: &a.sums, tables, panel: a.panel.as_ref() };
        if tokens == 1 {
            let mut acc = vec![0i32; m.rows];
            self.team.for_each_chunk_mut(&mut acc, chunk_rows, |i, out| {
                let r0 = i * chunk_rows;
                layouts::gemm_rows(isa, &w, r0, r0 + out.len(), acts(), out);
            });
            for (o, &v) in y.iter_mut().zip(&acc) {
                *o = v as f32 * factors[0];
            }
        } else if layouts::token_spans(isa, w.layout, tokens).is_some() {
            // A prompt split by tokens (the AVX2 lookup GEMM): each task takes every row against
            // one span of tokens, so no two threads build the same tables, and each call brings
            // the whole matrix: faster than one part of the rows per thread
            // (docs/performance-notes.md, "Prompt GEMM").
            let (rows, k) = (m.rows, a.padded);
            let y_rows = TokenMajor(y.as_mut_ptr());
            debug_assert!(!a.spans.is_empty(), "prepare_panel laid the spans out");
            a.spans.par_iter().for_each(|(span, panel)| {
                let acts = layouts::Acts {
                    codes: &a.codes.as_slice()[span.start * k..span.end * k],
                    sums: &a.sums[span.clone()],
                    tables: None,
                    panel: panel.as_ref(),
                };
                let mut acc = vec![0i32; rows * span.len()];
                layouts::gemm_rows(isa, &w, 0, rows, acts, &mut acc);
                // SAFETY: y holds tokens × rows floats; this task alone writes the tokens of its
                // span (the spans are disjoint), and y outlives the parallel loop.
                unsafe { y_rows.scale_in(rows, 0..rows, span.clone(), &acc, &factors) };
            });
        } else {
            // A prompt: each task's rows come out row-major (`[row][token]`), and the task
            // scales them into the token-major output while they are still in its cache. A
            // separate pass over the whole product afterwards missed the cache on nearly every
            // read (docs/performance-notes.md, "Prompt GEMM").
            let rows = m.rows;
            let y_rows = TokenMajor(y.as_mut_ptr());
            (0..rows.div_ceil(chunk_rows)).into_par_iter().for_each(|i| {
                let (r0, r1) = (i * chunk_rows, ((i + 1) * chunk_rows).min(rows));
                let mut acc = vec![0i32; (r1 - r0) * tokens];
                layouts::gemm_rows(isa, &w, r0, r1, acts(), &mut acc);
                // SAFETY: y holds tokens × rows floats; this task alone writes rows r0..r1 of
                // each token (the tasks' row ranges are disjoint), and y outlives the loop.
                unsafe { y_rows.scale_in(rows, r0..r1, 0..tokens, &acc, &factors) };
            });
        }
        if let Some(p) = &self.profile {
            p.add(Op::Ternary, started.elapsed());
        }
        y
    }
}
