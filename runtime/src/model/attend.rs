//! The attention core of a session on a sequence's KV cache: RoPE at the sequence's positions,
//! the cache write, and causal grouped-query attention over the cached rows (the per-head
//! arithmetic is `attention.rs`'s).

use super::attention::{HeadRows, Queries, attend_heads};
use super::forward::{Seq, Session};
use super::kv::{KvCache, LayerSpan};
use super::norm::for_each_row;
use super::profile::Op;
use crate::{Result, RuntimeError};
use tern_converters::model::RopePairing;

impl Session<'_> {
    /// The attention core of layer `l` on projected `q`, `k`, `v` (`[T, heads·d]`, `[T, kv·d]`)
    /// at positions `position()..`: RoPE, cache write, causal GQA attention → `[T, heads·d]`.
    pub fn attend(&mut self, l: usize, mut q: Vec<f32>, mut k: Vec<f32>, v: &[f32]) -> Result<Vec<f32>> {
        let c = &self.model.config;
        let t = k.len() / (c.kv_heads * c.head_dim).max(1);
        self.extend_rope(self.position() + t);
        self.with_own_cache(|s, cache| s.attend_in(cache, l, &mut q, &mut k, v, t == 1))
    }

    /// [`Session::attend`] for the sequences `seqs`, whose rows follow each other in q, k and v.
    pub(super) fn attend_seqs(
        &self,
        seqs: &mut [Seq],
        l: usize,
        mut q: Vec<f32>,
        mut k: Vec<f32>,
        v: &[f32],
    ) -> Result<Vec<f32>> {
        if let [(cache, t)] = seqs {
            let one_token = *t == 1;
            return self.attend_in(cache, l, &mut q, &mut k, v, one_token);
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
                &mut q[a * qw..b * qw],
                &mut k[a * kw..b * kw],
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
    pub(super) fn attend_in(
        &self,
        cache: &mut KvCache,
        l: usize,
        q: &mut [f32],
        k: &mut [f32],
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
        self.rope(q, c.heads, cache.pos);
        self.rope(k, c.kv_heads, cache.pos);
        for (i, (key, value)) in k.chunks_exact(kv_dim).zip(v.chunks_exact(kv_dim)).enumerate() {
            for (g, (key, value)) in key.chunks_exact(d).zip(value.chunks_exact(d)).enumerate() {
                let at = self.kv_index(cache, l, g, cache.pos + i);
                cache.keys.write(at, key);
                cache.values.write(at, value);
            }
        }
        let out = self.attention(cache, l, q, t, on_team);
        if let Some(p) = &self.profile {
            p.add(Op::Attention, started.elapsed());
        }
        Ok(out)
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
    /// that a generated token's attention reads as one stream (docs/performance-notes.md,
    /// "Attention and the KV cache").
    fn kv_index(&self, cache: &KvCache, l: usize, g: usize, p: usize) -> usize {
        let c = &self.model.config;
        ((l * c.kv_heads + g) * cache.ctx + p) * c.head_dim
    }

    /// Layer `l`'s rows in a cache, the first `positions` of each head written.
    pub(super) fn layer_span(&self, cache: &KvCache, l: usize, positions: usize) -> LayerSpan {
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
}
