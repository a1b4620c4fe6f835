//! The forward pass over a GGUF model, llama2.c-style: one function per block, plain f32 vectors,
//! the integer kernels for every BitLinear, rayon across output rows.
//!
//! BitLinear: each token's input is quantised to int8 exactly as the reference does, the kernel
//! computes Σ t·q exactly in integers, and the result is scaled once by β / s.

use super::attention::{HeadRows, Queries, attend_heads};
use super::kv::{KvCache, KvType, LayerSpan};
use super::profile::{Op, Profile};
use super::weights::{FloatMatrix, Layer, Model, TernaryMatrix};
use crate::cpu::{self, Isa};
use crate::kernels::{act, float, head, layouts};
use crate::team::Team;
use crate::{Result, RuntimeError};
use rayon::prelude::*;
use std::ops::Range;
use tern_converters::model::{Activation, RopePairing};
use tern_formats::{Layout, TensorType, float_blocks};

/// Prompt tokens per forward pass: longer prompts run in batches of this many, which bounds the
/// activations held at once (0.16 MiB per token on 2B-4T). Each batch reads the weights once
/// more, small beside its arithmetic: on 2B-4T (AMD host, 64-token batches) pp128 was 1-3 %
/// slower than in one pass and peaked 11 MiB lower, and pp512 faster (65 vs 53 t/s, 2 threads)
/// at 70 MiB less. 128 rather than 64 on the Intel host: AMX prompts with 2 threads pp128 241 →
/// 308-330 t/s and pp512 197 → 221, AVX2 the same, peak RSS of pp512 the same (1.20 GiB).
pub const MICRO_BATCH: usize = 128;

/// Which positions' logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Only the last position (generation).
    Last,
    /// Every position (scoring, verification).
    All,
    /// None (prefill that only fills the cache).
    None,
}

/// Quantised activations of several tokens, padded per token to the matrix's padded width.
struct QuantBatch {
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
    fn new(isa: Isa, x: &[f32], width: usize, padded: usize) -> QuantBatch {
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

/// How much of each KV head's cached keys, and of its values, a generated token asks for ahead
/// of its attention: all of 64 positions of 128 f32, and 2B-4T's five heads' keys and values
/// then take 320 KiB, within one core's L2 beside the v projection's 400 KiB streaming past.
const KV_PREFETCH_BYTES: usize = 32 << 10;

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
    /// (docs/benchmarks.md).
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
/// buffer began 16 bytes past a line, and the I2_S GEMV ran 7-8 % slower
/// (`runtime/examples/gemv_probe.rs`, `SKEW=16`).
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

/// A model in use: the instruction set, the threads, RoPE tables, and one sequence's KV cache.
/// [`Session::forward_batch`] runs other sequences' caches through the same machinery, so a
/// server decodes many sequences in one pass over the weights.
pub struct Session<'m> {
    pub model: &'m Model,
    pub isa: Isa,
    /// This session's own sequence (`forward`, `layer`, `attend`…).
    cache: KvCache,
    /// RoPE rows for every position used so far, by any sequence (grown on demand).
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// When set, every operation's wall time is added to it (`tern bench --profile`).
    pub profile: Option<std::sync::Arc<Profile>>,
    /// As many threads as the rayon pool the session was made in: one token's parallel
    /// operations run on it, a prompt's on rayon (`crate::team`).
    team: Team,
}

/// Receives the residual stream entering each layer (`residual.{l}`) and after the last one.
pub type Tap<'a> = &'a mut dyn FnMut(&str, &[f32]);

/// One sequence's share of a batched forward pass: its cache, the tokens it appends at the
/// cache's position, and which of their logits it wants.
pub struct BatchPart<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub want: Want,
}

/// A sequence inside a pass: its cache and how many of the pass's rows are its tokens.
type Seq<'a> = (&'a mut KvCache, usize);

impl<'m> Session<'m> {
    /// A session with a KV cache for `ctx` positions (capped at the model's context length).
    /// The cache is allocated zeroed, so untouched positions cost no resident memory.
    pub fn new(model: &'m Model, ctx: usize) -> Session<'m> {
        Session::with_kv_type(model, ctx, KvType::F32)
    }

    /// [`Session::new`] with the KV cache stored as `kv` (f16: half the memory, rounded keys and
    /// values).
    pub fn with_kv_type(model: &'m Model, ctx: usize, kv_type: KvType) -> Session<'m> {
        Session {
            model,
            isa: cpu::selected(),
            cache: KvCache::new(&model.config, ctx, kv_type),
            // RoPE rows grow with the positions used, not the whole context up front.
            rope_cos: Vec::new(),
            rope_sin: Vec::new(),
            profile: None,
            team: Team::new(rayon::current_num_threads()),
        }
    }

    /// `f(i, chunk)` for each `chunk`-long piece of `data`, across threads: on the session's
    /// spinning team when the operation is one generated token's (short, many per token), on
    /// rayon when it is a prompt's.
    fn for_each_chunk<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        one_token: bool,
        f: impl Fn(usize, &mut [T]) + Sync + Send,
    ) {
        if one_token {
            self.team.for_each_chunk_mut(data, chunk, f);
        } else {
            data.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c));
        }
    }

    /// Runs `f`, charging its wall time to `op` when profiling.
    fn time<T>(&self, op: Op, f: impl FnOnce() -> T) -> T {
        match &self.profile {
            Some(p) => p.time(op, f),
            None => f(),
        }
    }

    pub fn position(&self) -> usize {
        self.cache.position()
    }

    pub fn context(&self) -> usize {
        self.cache.context()
    }

    /// Forgets every position (keeps the allocations).
    pub fn reset(&mut self) {
        self.cache.reset();
    }

    /// Keeps only the first `pos` positions (a chat whose new prompt shares only a prefix).
    pub fn rewind(&mut self, pos: usize) {
        self.cache.rewind(pos);
    }

    /// Runs `f` on this session's own cache as the one sequence of a pass. The cache is lent out
    /// for the call, so `f` may borrow the session and the cache at once.
    fn with_own_cache<T>(&mut self, f: impl FnOnce(&mut Self, &mut KvCache) -> T) -> T {
        let mut cache = std::mem::take(&mut self.cache);
        let out = f(self, &mut cache);
        self.cache = cache;
        out
    }

    /// Grows the RoPE tables to cover positions `0..end`.
    fn extend_rope(&mut self, end: usize) {
        let c = &self.model.config;
        crate::rope::extend_tables(c.head_dim, c.rope_theta, end, &mut self.rope_cos, &mut self.rope_sin);
    }

    /// Runs `tokens` at positions `position()..`, appends them to the cache and returns the wanted
    /// logits row-major `[rows, vocab]`.
    pub fn forward(&mut self, tokens: &[u32], want: Want, tap: Option<Tap>) -> Result<Vec<f32>> {
        if tap.is_none() && tokens.len() > MICRO_BATCH {
            return self.forward_in_micro_batches(tokens, want);
        }
        self.with_own_cache(|s, cache| {
            let mut parts = [BatchPart { cache, tokens, want }];
            Ok(s.run_parts(&mut parts, tap)?.pop().unwrap_or_default())
        })
    }

    /// Several sequences in one pass: every part's tokens go through each BitLinear together
    /// (one read of the weights for all), each attends over its own cache. Each part's logits
    /// are the same bits as its own `forward` would give (every operation but attention is per
    /// token, and attention is per sequence), returned in the parts' order.
    pub fn forward_batch(&mut self, parts: &mut [BatchPart]) -> Result<Vec<Vec<f32>>> {
        self.run_parts(parts, None)
    }

    fn run_parts(&mut self, parts: &mut [BatchPart], tap: Option<Tap>) -> Result<Vec<Vec<f32>>> {
        let model = self.model;
        let c = &model.config;
        for p in parts.iter() {
            if p.tokens.is_empty() {
                return Err(RuntimeError::Input("no tokens to run".into()));
            }
            if p.cache.pos + p.tokens.len() > p.cache.ctx {
                return Err(RuntimeError::Input(format!(
                    "{} positions exceed the context of {} (use a larger --ctx, up to {})",
                    p.cache.pos + p.tokens.len(),
                    p.cache.ctx,
                    c.context
                )));
            }
        }
        self.extend_rope(parts.iter().map(|p| p.cache.pos + p.tokens.len()).max().unwrap_or(0));
        let tokens: Vec<u32> = parts.iter().flat_map(|p| p.tokens.iter().copied()).collect();
        let mut x = self.time(Op::Embed, || self.embed(&tokens))?;
        let mut seqs: Vec<Seq> = parts.iter_mut().map(|p| (&mut *p.cache, p.tokens.len())).collect();
        let mut tap = tap;
        for l in 0..c.layers {
            if let Some(t) = tap.as_mut() {
                t(&format!("residual.{l}"), &x);
            }
            self.layer_in(&mut seqs, l, &mut x)?;
        }
        if let Some(t) = tap.as_mut() {
            t(&format!("residual.{}", c.layers), &x);
        }
        drop(seqs);
        let h = c.hidden;
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(parts.len());
        let mut first = 0;
        for p in parts.iter_mut() {
            let n = p.tokens.len();
            p.cache.pos += n;
            let wanted = match p.want {
                Want::None => 0..0,
                Want::Last => first + n - 1..first + n,
                Want::All => first..first + n,
            };
            rows.extend_from_slice(&x[wanted.start * h..wanted.end * h]);
            counts.push(wanted.len());
            first += n;
        }
        let logits = if rows.is_empty() { Vec::new() } else { self.time(Op::LmHead, || self.logits(&rows)) };
        let mut rest = logits.as_slice();
        Ok(counts
            .into_iter()
            .map(|n| {
                let (mine, after) = rest.split_at(n * c.vocab);
                rest = after;
                mine.to_vec()
            })
            .collect())
    }

    /// A long prompt as consecutive forward calls of at most [`MICRO_BATCH`] tokens. Every
    /// operation but attention is per token, and attention reads the keys and values earlier
    /// batches cached, so the logits are the same bits as in one call (tested).
    fn forward_in_micro_batches(&mut self, tokens: &[u32], want: Want) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        let batches = tokens.len().div_ceil(MICRO_BATCH);
        for (i, batch) in tokens.chunks(MICRO_BATCH).enumerate() {
            let last = i + 1 == batches;
            let want = match want {
                Want::All => Want::All,
                Want::Last if last => Want::Last,
                _ => Want::None,
            };
            logits.extend(self.forward(batch, want, None)?);
        }
        Ok(logits)
    }

    /// Embedding rows of `tokens`, `[T, hidden]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let m = &self.model.embed;
        let mut x = Vec::with_capacity(tokens.len() * m.cols);
        for &t in tokens {
            if t as usize >= m.rows {
                return Err(RuntimeError::Input(format!(
                    "token id {t} is outside the vocabulary (size {})",
                    m.rows
                )));
            }
            let row = self.model.float_row(m, t as usize);
            let start = x.len();
            x.resize(start + m.cols, 0.0);
            // The loader checked the type and the row size.
            float_blocks::dequantize_row(m.ty, row, &mut x[start..])
                .map_err(|e| RuntimeError::Input(format!("token_embd.weight row {t}: {e}")))?;
        }
        Ok(x)
    }

    /// One decoder layer on the residual stream `x` `[T, hidden]` at positions `position()..`
    /// (writes this layer's keys and values into the cache; does not advance the position).
    pub fn layer(&mut self, l: usize, x: &mut [f32]) -> Result<()> {
        let t = x.len() / self.model.config.hidden;
        self.extend_rope(self.position() + t);
        self.with_own_cache(|s, cache| s.layer_in(&mut [(cache, t)], l, x))
    }

    /// [`Session::layer`] over the sequences `seqs`, whose rows follow each other in `x`.
    fn layer_in(&self, seqs: &mut [Seq], l: usize, x: &mut [f32]) -> Result<()> {
        let c = &self.model.config;
        let layer: &Layer = &self.model.layers[l];
        let h = self.time(Op::Norm, || rms_norm(x, &layer.attn_norm, c.rms_eps));
        let attn = self.attention_block_in(seqs, l, &h)?;
        add_in_place(x, &attn, c.hidden);
        let h = self.time(Op::Norm, || rms_norm(x, &layer.ffn_norm, c.rms_eps));
        let mlp = self.mlp_block(l, &h);
        add_in_place(x, &mlp, c.hidden);
        Ok(())
    }

    /// The attention block of layer `l` on normed input `h` `[T, hidden]` at positions
    /// `position()..`: q/k/v, RoPE, cache write, causal GQA attention, sub-norm, o.
    pub fn attention_block(&mut self, l: usize, h: &[f32]) -> Result<Vec<f32>> {
        let t = h.len() / self.model.config.hidden;
        self.extend_rope(self.position() + t);
        self.with_own_cache(|s, cache| s.attention_block_in(&mut [(cache, t)], l, h))
    }

    fn attention_block_in(&self, seqs: &mut [Seq], l: usize, h: &[f32]) -> Result<Vec<f32>> {
        let model = self.model;
        let c = &model.config;
        let layer: &Layer = &model.layers[l];
        // q, k and v share one quantised input.
        let mut qa =
            self.time(Op::Quantise, || QuantBatch::new(self.isa, h, c.hidden, layer.q.padded_cols()));
        let q = self.bitlinear(&layer.q, &mut qa);
        let k = self.bitlinear(&layer.k, &mut qa);
        if let [(cache, 1)] = seqs {
            // The weight stream has evicted this layer's cached rows since the last token; asked
            // for now, they arrive while v is computed (docs/benchmarks.md).
            let span = self.layer_span(cache, l, cache.pos);
            cache.keys.prefetch(span, KV_PREFETCH_BYTES);
            cache.values.prefetch(span, KV_PREFETCH_BYTES);
        }
        let v = self.bitlinear(&layer.v, &mut qa);
        let mut ctx = self.attend_seqs(seqs, l, q, k, &v)?;
        if let Some(w) = &layer.attn_sub_norm {
            ctx = self.time(Op::Norm, || rms_norm(&ctx, w, c.rms_eps));
        }
        Ok(self.project(&layer.o, &ctx))
    }

    /// The attention core of layer `l` on projected `q`, `k`, `v` (`[T, heads·d]`, `[T, kv·d]`)
    /// at positions `position()..`: RoPE, cache write, causal GQA attention → `[T, heads·d]`.
    pub fn attend(&mut self, l: usize, q: Vec<f32>, k: Vec<f32>, v: &[f32]) -> Result<Vec<f32>> {
        let c = &self.model.config;
        let t = k.len() / (c.kv_heads * c.head_dim).max(1);
        self.extend_rope(self.position() + t);
        self.with_own_cache(|s, cache| s.attend_in(cache, l, q, k, v, t == 1))
    }

    /// [`Session::attend`] for the sequences `seqs`, whose rows follow each other in q, k and v.
    fn attend_seqs(
        &self,
        seqs: &mut [Seq],
        l: usize,
        q: Vec<f32>,
        k: Vec<f32>,
        v: &[f32],
    ) -> Result<Vec<f32>> {
        if let [(cache, t)] = seqs {
            let one_token = *t == 1;
            return self.attend_in(cache, l, q, k, v, one_token);
        }
        let c = &self.model.config;
        let (qw, kw) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let mut out = Vec::with_capacity(q.len());
        let mut row = 0;
        for (cache, n) in seqs.iter_mut() {
            let (a, b) = (row, row + *n);
            out.extend(self.attend_in(
                cache,
                l,
                q[a * qw..b * qw].to_vec(),
                k[a * kw..b * kw].to_vec(),
                &v[a * kw..b * kw],
                // Several sequences: the pass's other operations run on rayon, so this one too,
                // or the team's workers would spin beside rayon's after every sequence.
                false,
            )?);
            row = b;
        }
        Ok(out)
    }

    /// The attention core on one sequence's cache (whose RoPE rows the caller made sure exist).
    fn attend_in(
        &self,
        cache: &mut KvCache,
        l: usize,
        mut q: Vec<f32>,
        mut k: Vec<f32>,
        v: &[f32],
        on_team: bool,
    ) -> Result<Vec<f32>> {
        let c = &self.model.config;
        let kv_dim = c.kv_heads * c.head_dim;
        let t = k.len() / kv_dim;
        if q.len() != t * c.heads * c.head_dim || k.len() != t * kv_dim || v.len() != k.len() {
            return Err(RuntimeError::Input("q, k and v do not describe the same tokens".into()));
        }
        if cache.pos + t > cache.ctx {
            return Err(RuntimeError::Input(format!(
                "{} positions exceed the context of {}",
                cache.pos + t,
                cache.ctx
            )));
        }
        let started = std::time::Instant::now();
        let d = c.head_dim;
        self.rope(&mut q, c.heads, cache.pos);
        self.rope(&mut k, c.kv_heads, cache.pos);
        for (i, (key, value)) in k.chunks_exact(kv_dim).zip(v.chunks_exact(kv_dim)).enumerate() {
            for (g, (key, value)) in key.chunks_exact(d).zip(value.chunks_exact(d)).enumerate() {
                let at = self.kv_index(cache, l, g, cache.pos + i);
                cache.keys.write(at, key);
                cache.values.write(at, value);
            }
        }
        let out = self.attention(cache, l, &q, t, on_team);
        if let Some(p) = &self.profile {
            p.add(Op::Attention, started.elapsed());
        }
        Ok(out)
    }
    /// `act(gate) · up` elementwise (relu² or SiLU).
    pub fn activate(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let mut out = gate.to_vec();
        self.activate_in_place(&mut out, up);
        out
    }

    /// [`Session::activate`] written over `gate`.
    fn activate_in_place(&self, gate: &mut [f32], up: &[f32]) {
        let (activation, width) = (self.model.config.activation, self.model.config.intermediate);
        for_each_row(gate, width, |i, gate| {
            let up = &up[i * width..];
            match activation {
                Activation::Relu2 => {
                    gate.iter_mut().zip(up).for_each(|(g, &u)| *g = g.max(0.0) * g.max(0.0) * u)
                }
                Activation::Silu => {
                    gate.iter_mut().zip(up).for_each(|(g, &u)| *g = *g / (1.0 + (-*g).exp()) * u)
                }
            }
        });
    }

    /// The MLP block of layer `l` on normed input `h`: `down(sub_norm(act(gate(h)) · up(h)))`.
    /// Each intermediate is dropped as soon as the next exists (the activation overwrites gate):
    /// with a 64-token batch on 2B-4T they are 1.8 MB each.
    pub fn mlp_block(&self, l: usize, h: &[f32]) -> Vec<f32> {
        let c = &self.model.config;
        let layer: &Layer = &self.model.layers[l];
        // gate and up share one quantised input.
        let mut ga =
            self.time(Op::Quantise, || QuantBatch::new(self.isa, h, c.hidden, layer.gate.padded_cols()));
        let mut a = self.bitlinear(&layer.gate, &mut ga);
        let up = self.bitlinear(&layer.up, &mut ga);
        drop(ga);
        self.time(Op::Activation, || self.activate_in_place(&mut a, &up));
        drop(up);
        if let Some(w) = &layer.ffn_sub_norm {
            a = self.time(Op::Norm, || rms_norm(&a, w, c.rms_eps));
        }
        self.project(&layer.down, &a)
    }

    /// One BitLinear: `x` `[T, cols]` → `[T, rows]` (quantise per token, integer GEMM, × β/s).
    pub fn project(&self, m: &TernaryMatrix, x: &[f32]) -> Vec<f32> {
        let mut a = self.time(Op::Quantise, || QuantBatch::new(self.isa, x, m.cols, m.padded_cols()));
        self.bitlinear(m, &mut a)
    }

    /// `[T, cols]` quantised → `[T, rows]` f32: exact integer dots, then × β / s per token.
    fn bitlinear(&self, m: &TernaryMatrix, a: &mut QuantBatch) -> Vec<f32> {
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
        if let Some(key) = w.table_key() {
            self.time(Op::Tables, || {
                a.tables(key);
            });
        }
        if tokens > 1 {
            self.time(Op::Tables, || a.prepare_panel(isa, w.layout));
        }
        let a = &*a;
        let tables = w.table_key().and_then(|key| a.tables.iter().find(|t| t.key == key));
        // Row chunks: enough for every thread to get several, large enough to amortise the task,
        // and whole row groups (tiled layouts store BM rows together). Chunks only balance
        // threads, so one thread generating takes the whole matrix in one call (TQ2_0 no slower,
        // and the quarter-stream GEMV needs long streams: tg with 1 thread 81 → 86 % of the
        // ceiling; docs/benchmarks.md). A prompt keeps its chunks even then: each chunk's output
        // is scaled while it is in the cache.
        let group = w.row_group();
        let threads = if tokens == 1 { self.team.threads() } else { rayon::current_num_threads() };
        let chunk_rows = if threads == 1 && tokens == 1 {
            m.rows
        } else if tokens == 1 && matches!(w.layout, Layout::I2S | Layout::TQ2_0) {
            // Generating, each thread takes one unbroken part of an I2_S matrix in one call (the
            // VNNI GEMV reads it as four quarter streams). Against runs of 16-row bands of the
            // matrix's quarters, tg with 2 threads 91 → 92 % of the ceiling, and 72.5 → 76 % when
            // the host's bandwidth doubles; AVX2 the same as 256-row chunks (docs/benchmarks.md).
            // TQ2_0 too, whose GEMV reads four quarter streams on Intel: 2 threads 84 → 88-89 %.
            m.rows.div_ceil(threads).next_multiple_of(group).min(m.rows)
        } else if layouts::wants_long_calls(isa, w.layout, tokens) {
            // The AVX2 lookup GEMM builds its tables once per call: at 256 rows a call that
            // took 40 % of the product (docs/benchmarks.md), so each thread takes one part.
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
            // the whole matrix. Against one part of the rows per thread, forced AVX2 pp128 went
            // 59-60 → 65 t/s with 1 thread and 94-97 → 103-106 with 2 (docs/benchmarks.md).
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
            // read (4.6 % of a prompt, 5.4 % read a few tokens at a time).
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

    /// RoPE, in the file's pairing, on every head of every token, positions `pos..`.
    fn rope(&self, x: &mut [f32], heads: usize, pos: usize) {
        let d = self.model.config.head_dim;
        let apply = match self.model.config.rope_pairing {
            RopePairing::HalfSplit => crate::rope::apply,
            RopePairing::Interleaved => crate::rope::apply_interleaved,
        };
        let (cos, sin) = (&self.rope_cos, &self.rope_sin);
        for_each_row(x, heads * d, |i, token| {
            let p = (pos + i) * d;
            for head in token.chunks_exact_mut(d) {
                apply(head, &cos[p..p + d], &sin[p..p + d]);
            }
        });
    }

    /// Where position `p` of KV head `g` of layer `l` starts in a cache: layer by layer, head by
    /// head, position by position. Head-major, so a head's cached rows are one contiguous run
    /// that a generated token's attention reads as one stream (docs/benchmarks.md).
    fn kv_index(&self, cache: &KvCache, l: usize, g: usize, p: usize) -> usize {
        let c = &self.model.config;
        ((l * c.kv_heads + g) * cache.ctx + p) * c.head_dim
    }

    /// Layer `l`'s rows in a cache, the first `positions` of each head written.
    fn layer_span(&self, cache: &KvCache, l: usize, positions: usize) -> LayerSpan {
        let c = &self.model.config;
        LayerSpan {
            at: self.kv_index(cache, l, 0, 0),
            heads: c.kv_heads,
            ctx: cache.ctx,
            positions,
            d: c.head_dim,
        }
    }

    /// Causal GQA attention of `q` `[T, heads·d]` over a cache's positions `0..=pos+i`.
    /// `on_team`: a one-token pass, whose parallel operations run on the session's team.
    fn attention(&self, cache: &KvCache, l: usize, q: &[f32], t: usize, on_team: bool) -> Vec<f32> {
        let c = &self.model.config;
        let d = c.head_dim;
        let n_rep = c.heads / c.kv_heads;
        let scale = (d as f32).powf(-0.5);
        let mut out = vec![0f32; t * c.heads * d];
        let span = self.layer_span(cache, l, cache.pos + t);
        let (keys, head_stride) = cache.keys.layer(span, t > 1);
        let (values, _) = cache.values.layer(span, t > 1);
        let isa = self.isa;
        let pos = cache.pos;
        // One task per KV group (the query heads reading the same cached rows) and token: the
        // rows come from memory once per task, and one-head tasks of about a microsecond each
        // cost more to hand out than they took. The group's heads go through the core together,
        // so each row is read once for all of them, not once per head.
        let groups = c.heads / n_rep;
        self.for_each_chunk(&mut out, n_rep * d, on_team, |task, o| {
            let (i, g) = (task / groups, task % groups);
            let head = HeadRows { keys: &keys, values: &values, stride: d, offset: g * head_stride };
            let qs = &q[task * n_rep * d..(task + 1) * n_rep * d];
            attend_heads(isa, Queries { qs, d, len: pos + i + 1, scale }, &head, o);
        });
        out
    }
    /// Final norm and lm_head for the rows of `x` `[n, hidden]` → `[n, vocab]`.
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let c = &self.model.config;
        let h = rms_norm(x, &self.model.output_norm, c.rms_eps);
        let m: &FloatMatrix = &self.model.output;
        let n = h.len() / c.hidden;
        if n == 0 {
            return Vec::new();
        }
        let isa = self.isa;
        let mut out = vec![0f32; n * m.rows];
        // Vocab-major so each output row of the matrix is read once for all positions.
        let mut by_vocab = vec![0f32; m.rows * n];
        // A Q8_0/Q4_0 head runs integer dots against the normed state quantised once per position;
        // other block-quantised rows (other tools' files) are decoded per row, then dotted in f32.
        let integer_head = matches!(m.ty, TensorType::Q8_0 | TensorType::Q4_0);
        let (head_dot, head_acts): (Option<head::HeadDot>, Vec<head::HeadActs>) = if integer_head {
            (Some(head::dot_fn(isa, m.ty)), h.chunks_exact(c.hidden).map(head::HeadActs::quantise).collect())
        } else {
            (None, Vec::new())
        };
        let decode_rows = !integer_head && !matches!(m.ty, TensorType::F16 | TensorType::F32);
        let four_streams = cpu::weight_streams() == 4;
        let head_dot4 = if integer_head && four_streams { head::dot4_fn(isa, m.ty) } else { None };
        self.for_each_chunk(&mut by_vocab, n * HEAD_CHUNK_ROWS, n == 1, |chunk, o| {
            if m.ty == TensorType::F16 && n > 1 {
                // Several positions (sequences decoding together): each row widened once for all.
                let rows = self.model.float_rows(m, chunk * HEAD_CHUNK_ROWS, o.len() / n);
                float::dot_f16_rows_positions(isa, rows, &h, c.hidden, o);
                return;
            }
            if m.ty == TensorType::F16 {
                // The chunk's rows are consecutive in the map: one call per position for them all.
                let count = o.len() / n;
                let rows = self.model.float_rows(m, chunk * HEAD_CHUNK_ROWS, count);
                let mut dots = [0f32; HEAD_CHUNK_ROWS];
                for (p, xp) in h.chunks_exact(c.hidden).enumerate() {
                    if four_streams {
                        float::dot_f16_rows_four_streams(isa, rows, xp, &mut dots[..count]);
                    } else {
                        float::dot_f16_rows(isa, rows, xp, &mut dots[..count]);
                    }
                    for (slot, &d) in o.chunks_exact_mut(n).zip(&dots[..count]) {
                        slot[p] = d;
                    }
                }
                return;
            }
            let mut decoded = vec![0f32; if decode_rows { m.cols } else { 0 }];
            let mut slots: Vec<&mut [f32]> = o.chunks_exact_mut(n).collect();
            // Four streams on an integer head: the quarters' rows four at a time in one call.
            let quarter = match head_dot4 {
                Some(dot4) => {
                    let quarter = slots.len() / 4;
                    for i in 0..quarter {
                        let index = [0, 1, 2, 3].map(|q| q * quarter + i);
                        let rows = index.map(|r| self.model.float_row(m, chunk * HEAD_CHUNK_ROWS + r));
                        for (p, acts) in head_acts.iter().enumerate() {
                            for (r, d) in index.into_iter().zip(dot4(rows, acts)) {
                                slots[r][p] = d;
                            }
                        }
                    }
                    quarter
                }
                None => 0,
            };
            for i in quarter_order(slots.len(), four_streams).filter(|&i| i >= 4 * quarter) {
                let slot = &mut *slots[i];
                let row = self.model.float_row(m, chunk * HEAD_CHUNK_ROWS + i);
                if let Some(dot) = head_dot {
                    for (s, acts) in slot.iter_mut().zip(&head_acts) {
                        *s = dot(row, acts);
                    }
                    continue;
                }
                if decode_rows {
                    float_blocks::dequantize_row(m.ty, row, &mut decoded)
                        .expect("the loader checked the output matrix's type and row size");
                }
                for (p, s) in slot.iter_mut().enumerate() {
                    let xp = &h[p * c.hidden..(p + 1) * c.hidden];
                    *s = match m.ty {
                        TensorType::F32 => float::dot_f32(row, xp),
                        _ => decoded.iter().zip(xp).map(|(a, b)| a * b).sum(),
                    };
                }
            }
        });
        for r in 0..m.rows {
            for p in 0..n {
                out[p * m.rows + r] = by_vocab[r * n + p];
            }
        }
        out
    }
}

/// The order in which to read `count` consecutive head rows: as they come, or, for four streams,
/// the first row of each quarter, then the second of each, and so on (any rows past the four
/// quarters last), so four places of the matrix are read at once.
fn quarter_order(count: usize, four_streams: bool) -> impl Iterator<Item = usize> {
    let quarter = if four_streams { count / 4 } else { 0 };
    (0..quarter).flat_map(move |i| (0..4).map(move |q| q * quarter + i)).chain(4 * quarter..count)
}

/// RMSNorm of each `weight.len()`-wide row: `w · x / sqrt(mean(x²) + eps)`, in f32. A prompt's
/// rows go across threads (each row's bits are the same either way: rows are independent).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let n = weight.len();
    let mut out = vec![0f32; x.len()];
    #[cfg(target_arch = "x86_64")]
    let simd = matches!(cpu::selected(), Isa::Avx2 | Isa::Avx512Vnni);
    for_each_row(&mut out, n, |i, out| {
        let x = &x[i * n..(i + 1) * n];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the selected instruction set was detected (`cpu::selected`).
            return unsafe { rms_norm_avx2(x, weight, eps, out) };
        }
        rms_norm_portable(x, weight, eps, out)
    });
    out
}

/// Output-head rows per task; on Intel each task reads them as four quarter streams. 256 rather
/// than 64 (longer streams, fewer tasks), interleaved on the Intel host: F16 head tg 92 → 93-95 %
/// of the ceiling with 1 thread, 86-89 → 89-90 % with 2; Q8_0 with 2 threads 79 → 83 %, Q4_0
/// 75-78 → 78-80 % (docs/benchmarks.md).
const HEAD_CHUNK_ROWS: usize = 256;

/// Rows from which a prompt's per-token elementwise work (norms, RoPE, activation, residual
/// adds) is split across threads; one generated token's is too small for a fork-join.
const PARALLEL_ROWS: usize = 2;

/// `f(i, row)` for each `width`-wide row of `x`: a prompt's rows across threads, one token's on
/// this thread.
fn for_each_row(x: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let width = width.max(1);
    if x.len() / width >= PARALLEL_ROWS {
        x.par_chunks_mut(width).enumerate().for_each(|(i, row)| f(i, row));
    } else {
        x.chunks_mut(width).enumerate().for_each(|(i, row)| f(i, row));
    }
}

/// [`rms_norm_portable`] compiled with 256-bit vectors: the same operations lane for lane (no
/// reassociation, no fused multiply-add), so the same bits in half the instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rms_norm_avx2(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_portable(x, weight, eps, out)
}

#[inline(always)]
fn rms_norm_portable(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (row, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let inv = 1.0 / (sum_of_squares(row) / n as f32 + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

/// `x += y` elementwise (a residual add), a prompt's rows across threads.
fn add_in_place(x: &mut [f32], y: &[f32], width: usize) {
    for_each_row(x, width, |i, x| x.iter_mut().zip(&y[i * width..]).for_each(|(a, b)| *a += b));
}

/// `Σ v²` in 32 interleaved partial sums, folded in halves in a fixed order: the same bits for a
/// row whether it comes alone (generation) or with others (a prompt). One running sum is a chain
/// of 2560-6912 dependent adds: it made the norms 1.4 % of a generated token and 2.4 % of a
/// prompt; 32 lanes are eight independent SSE chains, enough to hide the add latency.
#[inline(always)]
fn sum_of_squares(row: &[f32]) -> f32 {
    let mut lanes = [0f32; 32];
    let blocks = row.chunks_exact(32);
    let tail: f32 = blocks.remainder().iter().map(|v| v * v).sum();
    for c in blocks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let mut width = 16;
    while width > 0 {
        let (low, high) = lanes.split_at_mut(width);
        for (l, h) in low.iter_mut().zip(&high[..width]) {
            *l += h;
        }
        width /= 2;
    }
    lanes[0] + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random values in [−span/2, span/2] in steps of 1/1000 (xorshift32).
    fn random_values(seed: u32, span: u32) -> impl FnMut() -> f32 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % (span * 1000 + 1)) as f32 / 1000.0 - span as f32 / 2.0
        }
    }

    /// The four-stream head order visits every row once: quarters interleaved, then the rest.
    #[test]
    fn quarter_order_visits_every_row_once() {
        assert_eq!(quarter_order(9, true).collect::<Vec<_>>(), [0, 2, 4, 6, 1, 3, 5, 7, 8]);
        assert_eq!(quarter_order(3, true).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(quarter_order(5, false).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        for count in [0, 1, 4, 63, 64, 67] {
            let mut seen: Vec<usize> = quarter_order(count, true).collect();
            seen.sort();
            assert_eq!(seen, (0..count).collect::<Vec<_>>(), "{count} rows");
        }
    }

    /// RMSNorm against one written here in f64, on 19 rows of 37 (a block of 32 and a tail of
    /// five per row); and a row normed alone is the same bits as within a batch.
    #[test]
    fn rms_norm_matches_f64_and_is_the_same_alone_or_batched() {
        let n = 37;
        let mut random = random_values(0x1234_5678, 40);
        let rows: Vec<f32> = (0..19 * n).map(|_| random()).collect();
        let weight: Vec<f32> = (0..n).map(|_| random()).collect();
        let got = rms_norm(&rows, &weight, 1e-5);
        for (r, row) in rows.chunks_exact(n).enumerate() {
            let mean = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            let inv = 1.0 / (mean + 1e-5).sqrt();
            for (i, (&v, &w)) in row.iter().zip(&weight).enumerate() {
                let want = w as f64 * v as f64 * inv;
                let g = got[r * n + i] as f64;
                assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "row {r} col {i}: {g} vs {want}");
            }
            let alone = rms_norm(row, &weight, 1e-5);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&alone), bits(&got[r * n..(r + 1) * n]), "row {r}");
        }
    }

    /// The 256-bit compilation gives the portable code's bits, at widths with and without a
    /// tail after the 32-lane blocks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rms_norm_avx2_is_the_portable_one_bit_for_bit() {
        if !Isa::Avx2.supported() {
            return;
        }
        let mut random = random_values(0x0bad_cafe, 60);
        for n in [1usize, 31, 32, 45, 2560, 6913] {
            let rows: Vec<f32> = (0..3 * n).map(|_| random()).collect();
            let weight: Vec<f32> = (0..n).map(|_| random()).collect();
            let (mut want, mut got) = (vec![0f32; 3 * n], vec![1f32; 3 * n]);
            rms_norm_portable(&rows, &weight, 1e-6, &mut want);
            let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            // SAFETY: AVX2 was detected above.
            unsafe { rms_norm_avx2(&rows, &weight, 1e-6, &mut got) };
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want, "width {n}");
        }
    }
}
