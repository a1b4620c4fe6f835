//! The forward pass over a GGUF model, llama2.c-style, top to bottom: embedding → each decoder
//! layer (attention block, MLP block, each projection a BitLinear) → final norm and head. One
//! sequence (`forward`) or several at once (`forward_batch`: every BitLinear reads the weights
//! once for all, attention runs per sequence on its own cache).
//!
//! The machinery lives beside it: `bitlinear.rs` (int8 activations, the integer kernels, β / s),
//! `attend.rs` (RoPE, KV cache, attention core), `output.rs` (norm and head), `norm.rs`.

use super::bitlinear::QuantBatch;
use super::kv::{KvCache, KvType};
use super::norm::{add_in_place, rms_norm};
use super::profile::{Op, Profile};
use super::weights::{Layer, Model};
use crate::cpu::{self, Isa};
use crate::team::Team;
use crate::{Result, RuntimeError};
use rayon::prelude::*;
use tern_formats::float_blocks;

/// Prompt tokens per forward pass: longer prompts run in batches of this many, which bounds the
/// activations held at once; each batch reads the weights once more, small beside its
/// arithmetic (docs/performance-notes.md, "Prompt micro-batches").
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

/// How much of each KV head's cached keys, and of its values, a generated token asks for ahead
/// of its attention: enough for 64 positions of a 128-wide head, small enough that every head's
/// rows stay in one core's L2 beside the projection streaming past.
const KV_PREFETCH_BYTES: usize = 32 << 10;

/// A model in use: the instruction set, the threads, RoPE tables, and one sequence's KV cache.
/// [`Session::forward_batch`] runs other sequences' caches through the same machinery, so a
/// server decodes many sequences in one pass over the weights.
pub struct Session<'m> {
    pub model: &'m Model,
    pub isa: Isa,
    /// This session's own sequence (`forward`, `layer`, `attend`…).
    cache: KvCache,
    /// RoPE rows for every position used so far, by any sequence (grown on demand).
    pub(super) rope_cos: Vec<f32>,
    pub(super) rope_sin: Vec<f32>,
    /// When set, every operation's wall time is added to it (`tern bench --profile`).
    pub profile: Option<std::sync::Arc<Profile>>,
    /// As many threads as the rayon pool the session was made in: one token's parallel
    /// operations run on it, a prompt's on rayon (`crate::team`).
    pub(super) team: Team,
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
pub(super) type Seq<'a> = (&'a mut KvCache, usize);

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
    pub(super) fn for_each_chunk<T: Send>(
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
    pub(super) fn time<T>(&self, op: Op, f: impl FnOnce() -> T) -> T {
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
    pub(super) fn with_own_cache<T>(&mut self, f: impl FnOnce(&mut Self, &mut KvCache) -> T) -> T {
        let mut cache = std::mem::take(&mut self.cache);
        let out = f(self, &mut cache);
        self.cache = cache;
        out
    }

    /// Grows the RoPE tables to cover positions `0..end`.
    pub(super) fn extend_rope(&mut self, end: usize) {
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
        if let [_] = counts[..] {
            // One sequence (generation): its logits as they are, not a copy.
            return Ok(vec![logits]);
        }
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
            // for now, they arrive while v is computed (docs/performance-notes.md, "Attention and the
            // KV cache").
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
}
