//! The reference forward pass: what transformers' `BitNetForCausalLM` computes in float32,
//! written llama2.c-style over candle-core tensors, straight from a Hugging Face checkpoint.
//! Semantics: `../shared/docs/hf-checkpoints.md` §2; deviations are listed in docs/reference.md.
//!
//! It is the yardstick for every packed layout and kernel, so it is plain rather than fast: each
//! BitLinear fake-quantises its input exactly as transformers does (round half to even, `q / s`),
//! and matmuls go through candle. Projections are f32 matrices (about 4 bytes per parameter) in
//! transformers' arithmetic, int8 codes (1 byte) in the exact one, held in one of two ways with
//! the same arithmetic (tested bit for bit):
//! - [`Reference::load`]: every layer dequantised once at load — fast for repeated forwards.
//! - [`Reference::streamed`]: the checkpoint stays mapped; a layer is dequantised when it is
//!   needed and dropped after ([`LayerByLayer`] runs many prompts through each layer once), and
//!   embedding rows and the head are read from the map — any model fits in about one layer.

mod bitlinear;
mod rope;

pub use bitlinear::{Arithmetic, BitLinear};

use crate::{Result, RuntimeError};
use candle_core::{D, Device, Tensor};
use rope::Rope;
use tern_converters::model::{Activation, ModelSpec, PROJECTIONS, Projection};
use tern_formats::hf::HfCheckpoint;

/// Receives intermediate values by name: `residual.{l}` (input of layer l; l = L is the last
/// layer's output before the final norm), `module.{hf module path}.out` (plus the attention
/// context before its sub-norm, `self_attn.context.out`, and the MLP's `act(gate)·up`,
/// `mlp.act.out`), and the inputs of o_proj and down_proj (`….in`).
pub type Tap<'a> = &'a mut dyn FnMut(&str, &Tensor);

/// A tap that ignores everything.
pub fn no_tap() -> impl FnMut(&str, &Tensor) {
    |_, _| {}
}

#[derive(Clone)]
pub struct Norm {
    /// `[n]` f32.
    weight: Tensor,
    eps: f64,
}

impl Norm {
    /// transformers' RMSNorm: `weight * (x * rsqrt(mean(x²) + eps))`, in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)?)
    }
}

#[derive(Clone)]
pub struct Layer {
    pub input_norm: Norm,
    pub attn_sub_norm: Option<Norm>,
    pub post_norm: Norm,
    pub ffn_sub_norm: Option<Norm>,
    /// q, k, v, o, gate, up, down (the order of `PROJECTIONS`).
    pub proj: Vec<BitLinear>,
}

impl Layer {
    pub fn projection(&self, p: Projection) -> &BitLinear {
        &self.proj[PROJECTIONS.iter().position(|&q| q == p).expect("PROJECTIONS lists every projection")]
    }
}

/// Keys and values of past positions, per layer: `[kv_heads, positions, head_dim]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Number of positions already processed.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dims()[1])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of the output head per matmul. The head is always applied in these chunks, loaded or
/// streamed, so both give the same bits; 4096 rows of a 4096-wide model are 64 MiB of f32.
const HEAD_CHUNK_ROWS: usize = 4096;

pub struct Reference {
    pub spec: ModelSpec,
    /// Every layer's weights when loaded whole ([`Reference::load`]); empty when streamed.
    pub layers: Vec<Layer>,
    /// `[vocab, hidden]` when loaded whole.
    embed: Option<Tensor>,
    /// The head (the embedding when tied) as transposed views, `[hidden, ≤ HEAD_CHUNK_ROWS]` per
    /// chunk, when loaded whole.
    head_chunks: Vec<Tensor>,
    /// The mapped checkpoint, when streamed.
    ckpt: Option<HfCheckpoint>,
    arithmetic: Arithmetic,
    pub final_norm: Norm,
    rope: Rope,
    /// Master weights' f32 values while a streamed layer loads, kept from layer to layer.
    scratch: std::sync::Mutex<Vec<f32>>,
}

fn load_norm(ckpt: &HfCheckpoint, name: &str, eps: f64) -> Result<Norm> {
    let t = ckpt.require(name)?;
    let values = t.to_f32()?;
    let n = values.len();
    Ok(Norm { weight: Tensor::from_vec(values, n, &Device::Cpu)?, eps })
}

/// Layer `l`'s weights from the checkpoint; `scratch` holds master weights' f32 values on the way
/// and is kept for the next layer (a fresh buffer each layer paid a page fault per 4 KiB).
fn load_layer(
    ckpt: &HfCheckpoint,
    spec: &ModelSpec,
    l: usize,
    arithmetic: Arithmetic,
    scratch: &mut Vec<f32>,
) -> Result<Layer> {
    let eps = spec.rms_eps as f64;
    let fam = spec.family.traits();
    let name = |s: &str| format!("model.layers.{l}.{s}.weight");
    let proj = PROJECTIONS
        .iter()
        .map(|&p| {
            let (rows, cols) = spec.projection_shape(p);
            let layer =
                BitLinear::load(ckpt, &spec.hf_projection(l, p), rows, cols, spec.quant, arithmetic, scratch);
            // The projection's source pages are not needed again soon.
            #[cfg(unix)]
            for n in ckpt_names_of(spec, l, p) {
                if let Some(t) = ckpt.get(&n) {
                    t.release();
                }
            }
            layer
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Layer {
        input_norm: load_norm(ckpt, &name("input_layernorm"), eps)?,
        attn_sub_norm: fam.attn_sub_norm.map(|n| load_norm(ckpt, &name(n), eps)).transpose()?,
        post_norm: load_norm(ckpt, &name("post_attention_layernorm"), eps)?,
        ffn_sub_norm: fam.ffn_sub_norm.map(|n| load_norm(ckpt, &name(n), eps)).transpose()?,
        proj,
    })
}

/// The checkpoint tensors a projection is read from (master weight, or packed codes and scale).
#[cfg(unix)]
fn ckpt_names_of(spec: &ModelSpec, l: usize, p: Projection) -> [String; 2] {
    let base = spec.hf_projection(l, p);
    let scale = format!("{base}_scale");
    [base, scale]
}

/// The head's name in the checkpoint (the embedding when tied).
fn head_name(spec: &ModelSpec) -> &'static str {
    if spec.tied { "model.embed_tokens.weight" } else { "lm_head.weight" }
}

impl Reference {
    /// Loads a checkpoint with transformers' arithmetic (see [`Arithmetic`]).
    pub fn load(dir: impl AsRef<std::path::Path>) -> Result<Reference> {
        Self::load_with(dir, Arithmetic::Transformers)
    }

    /// Loads every layer (and the embedding and head) as f32 at once.
    pub fn load_with(dir: impl AsRef<std::path::Path>, arithmetic: Arithmetic) -> Result<Reference> {
        let mut r = Self::streamed(dir, arithmetic)?;
        let ckpt = r.ckpt.take().expect("streamed keeps the checkpoint");
        let spec = &r.spec;
        let dev = Device::Cpu;
        let embed = ckpt.require("model.embed_tokens.weight")?.to_f32()?;
        let embed = Tensor::from_vec(embed, (spec.vocab, spec.hidden), &dev)?;
        let head = if spec.tied {
            embed.clone()
        } else {
            let w = ckpt.require("lm_head.weight")?.to_f32()?;
            Tensor::from_vec(w, (spec.vocab, spec.hidden), &dev)?
        };
        let mut chunks = Vec::new();
        for start in (0..spec.vocab).step_by(HEAD_CHUNK_ROWS) {
            let n = HEAD_CHUNK_ROWS.min(spec.vocab - start);
            chunks.push(head.narrow(0, start, n)?.t()?);
        }
        let mut scratch = Vec::new();
        r.layers = (0..spec.layers)
            .map(|l| load_layer(&ckpt, spec, l, arithmetic, &mut scratch))
            .collect::<Result<_>>()?;
        r.embed = Some(embed);
        r.head_chunks = chunks;
        Ok(r)
    }

    /// Opens a checkpoint for layer-by-layer use: nothing but the norms is decoded now.
    pub fn streamed(dir: impl AsRef<std::path::Path>, arithmetic: Arithmetic) -> Result<Reference> {
        let ckpt = HfCheckpoint::open(dir)?;
        let spec = ModelSpec::from_checkpoint(&ckpt)?;
        for name in ["model.embed_tokens.weight", head_name(&spec)] {
            let t = ckpt.require(name)?;
            if t.info.shape != [spec.vocab, spec.hidden] {
                return Err(RuntimeError::Input(format!(
                    "{}: {name} has shape {:?}, expected [{}, {}]",
                    t.path().display(),
                    t.info.shape,
                    spec.vocab,
                    spec.hidden
                )));
            }
        }
        Ok(Reference {
            final_norm: load_norm(&ckpt, "model.norm.weight", spec.rms_eps as f64)?,
            rope: Rope::new(spec.head_dim, spec.rope_theta, spec.context)?,
            layers: Vec::new(),
            embed: None,
            head_chunks: Vec::new(),
            ckpt: Some(ckpt),
            arithmetic,
            spec,
            scratch: Default::default(),
        })
    }

    /// Layer `l`'s weights: borrowed when loaded whole, decoded from the checkpoint when streamed.
    pub fn layer_weights(&self, l: usize) -> Result<std::borrow::Cow<'_, Layer>> {
        match (&self.ckpt, self.layers.get(l)) {
            (_, Some(layer)) => Ok(std::borrow::Cow::Borrowed(layer)),
            (Some(ckpt), None) if l < self.spec.layers => {
                let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
                let layer = load_layer(ckpt, &self.spec, l, self.arithmetic, &mut scratch)?;
                if l + 1 == self.spec.layers {
                    // The head comes next, and the buffer is not needed for it.
                    *scratch = Vec::new();
                }
                Ok(std::borrow::Cow::Owned(layer))
            }
            _ => Err(RuntimeError::Input(format!("layer {l} is past the model's {}", self.spec.layers))),
        }
    }

    /// Bytes of f32 weights one decoder layer takes (what a streamed reference holds at a time).
    pub fn layer_bytes(&self) -> u64 {
        let s = &self.spec;
        let params: usize = PROJECTIONS.iter().map(|&p| s.projection_shape(p)).map(|(r, c)| r * c).sum();
        4 * params as u64
    }

    /// Embedding rows for `tokens`, `[T, hidden]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.spec.vocab) {
            return Err(RuntimeError::Input(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.spec.vocab
            )));
        }
        if let Some(embed) = &self.embed {
            let ids = Tensor::new(tokens, &Device::Cpu)?;
            return Ok(embed.index_select(&ids, 0)?);
        }
        let ckpt = self.ckpt.as_ref().expect("a reference is loaded or streamed");
        let t = ckpt.require("model.embed_tokens.weight")?;
        let h = self.spec.hidden;
        let mut rows = Vec::with_capacity(tokens.len() * h);
        for &id in tokens {
            let id = id as usize;
            rows.extend(t.range_to_f32(id * h..(id + 1) * h)?);
        }
        Ok(Tensor::from_vec(rows, (tokens.len(), h), &Device::Cpu)?)
    }

    /// The attention block of layer `l` on normed input `h` `[T, hidden]` at positions
    /// `cache.len()..`: q/k/v BitLinear, RoPE, GQA causal attention, attn_sub_norm, o BitLinear.
    /// Appends this block's keys and values to `cache` (layer `l`).
    pub fn attention(&self, l: usize, h: &Tensor, cache: &mut KvCache, tap: Tap) -> Result<Tensor> {
        self.attention_with(&*self.layer_weights(l)?, l, h, cache, tap)
    }

    fn attention_with(
        &self,
        layer: &Layer,
        l: usize,
        h: &Tensor,
        cache: &mut KvCache,
        tap: Tap,
    ) -> Result<Tensor> {
        let p = |name: &str| format!("module.model.layers.{l}.self_attn.{name}.out");
        let q = layer.projection(Projection::Q).forward(h)?;
        let k = layer.projection(Projection::K).forward(h)?;
        let v = layer.projection(Projection::V).forward(h)?;
        tap(&p("q_proj"), &q);
        tap(&p("k_proj"), &k);
        tap(&p("v_proj"), &v);
        let ctx = self.attention_core(l, q, k, v, cache)?;
        tap(&p("context"), &ctx);
        let ctx = match &layer.attn_sub_norm {
            Some(n) => {
                let y = n.forward(&ctx)?;
                tap(&p("attn_sub_norm"), &y);
                y
            }
            None => ctx,
        };
        tap(&format!("module.model.layers.{l}.self_attn.o_proj.in"), &ctx);
        let out = layer.projection(Projection::O).forward(&ctx)?;
        tap(&p("o_proj"), &out);
        Ok(out)
    }

    /// The attention core of layer `l`: projected `q` `[T, heads·d]`, `k`, `v` `[T, kv·d]` at
    /// positions `cache.len()..` → RoPE, cache append, GQA causal softmax attention → the context
    /// `[T, heads·d]` (before attn_sub_norm).
    pub fn attention_core(
        &self,
        l: usize,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let s = &self.spec;
        let (t, _) = q.dims2()?;
        if cache.layers.len() <= l {
            cache.layers.resize_with(l + 1, || None);
        }
        let past = cache.layers[l].as_ref().map_or(0, |(k, _)| k.dims()[1]);
        if past + t > s.context {
            return Err(RuntimeError::Input(format!(
                "{} positions exceed the context length {}",
                past + t,
                s.context
            )));
        }
        // [T, heads*d] → [heads, T, d]
        let heads = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((t, n, s.head_dim))?.transpose(0, 1)?.contiguous()?)
        };
        let q = self.rope.apply(&heads(q, s.heads)?, past)?;
        let k = self.rope.apply(&heads(k, s.kv_heads)?, past)?;
        let v = heads(v, s.kv_heads)?;
        let (k, v) = match cache.layers[l].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
        };
        cache.layers[l] = Some((k.clone(), v.clone()));
        let total = past + t;

        // GQA: query head h reads kv head h / n_rep.
        let n_rep = s.heads / s.kv_heads;
        let repeat = |x: &Tensor| -> Result<Tensor> {
            let parts: Vec<Tensor> =
                (0..s.heads).map(|h| x.narrow(0, h / n_rep, 1)).collect::<candle_core::Result<_>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        let (k, v) = (repeat(&k)?, repeat(&v)?);
        let scale = (s.head_dim as f64).powf(-0.5);
        let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? * scale)?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..total).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (1, t, total), &Device::Cpu)?;
        let probs = softmax_last(&scores.broadcast_add(&mask)?)?;
        let ctx = probs.matmul(&v)?.transpose(0, 1)?.contiguous()?.reshape((t, s.heads * s.head_dim))?;
        Ok(ctx)
    }

    /// The MLP of layer `l` on normed input `h`: `down(sub_norm(act(gate(h)) · up(h)))`.
    pub fn mlp(&self, l: usize, h: &Tensor, tap: Tap) -> Result<Tensor> {
        self.mlp_with(&*self.layer_weights(l)?, l, h, tap)
    }

    fn mlp_with(&self, layer: &Layer, l: usize, h: &Tensor, tap: Tap) -> Result<Tensor> {
        let p = |name: &str| format!("module.model.layers.{l}.mlp.{name}.out");
        let gate = layer.projection(Projection::Gate).forward(h)?;
        let up = layer.projection(Projection::Up).forward(h)?;
        tap(&p("gate_proj"), &gate);
        tap(&p("up_proj"), &up);
        let act = match self.spec.activation {
            Activation::Relu2 => gate.relu()?.sqr()?,
            Activation::Silu => gate.silu()?,
        };
        let mut a = (act * up)?;
        tap(&p("act"), &a);
        if let Some(n) = &layer.ffn_sub_norm {
            a = n.forward(&a)?;
            tap(&p("ffn_sub_norm"), &a);
        }
        tap(&format!("module.model.layers.{l}.mlp.down_proj.in"), &a);
        let out = layer.projection(Projection::Down).forward(&a)?;
        tap(&p("down_proj"), &out);
        Ok(out)
    }

    /// One decoder layer on the residual stream `x` `[T, hidden]`.
    pub fn layer(&self, l: usize, x: &Tensor, cache: &mut KvCache, tap: Tap) -> Result<Tensor> {
        self.layer_with(&*self.layer_weights(l)?, l, x, cache, tap)
    }

    /// [`Reference::layer`] with the layer's weights at hand.
    pub fn layer_with(
        &self,
        layer: &Layer,
        l: usize,
        x: &Tensor,
        cache: &mut KvCache,
        tap: Tap,
    ) -> Result<Tensor> {
        let h = layer.input_norm.forward(x)?;
        tap(&format!("module.model.layers.{l}.input_layernorm.out"), &h);
        let attn = self.attention_with(layer, l, &h, cache, tap)?;
        tap(&format!("module.model.layers.{l}.self_attn.out"), &attn);
        let x = (x + attn)?;
        let h = layer.post_norm.forward(&x)?;
        tap(&format!("module.model.layers.{l}.post_attention_layernorm.out"), &h);
        let mlp = self.mlp_with(layer, l, &h, tap)?;
        Ok((x + mlp)?)
    }

    /// Final norm and lm_head: `[T, hidden]` → `[T, vocab]`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.final_norm.forward(x)?;
        let mut parts = Vec::new();
        if self.head_chunks.is_empty() {
            let ckpt = self.ckpt.as_ref().expect("a reference is loaded or streamed");
            let hidden = self.spec.hidden;
            // The chunk callback returns format errors; a candle error is kept aside and raised after.
            let mut failed = None;
            ckpt.require(head_name(&self.spec))?.for_each_f32_chunk(HEAD_CHUNK_ROWS * hidden, |rows| {
                let product = Tensor::from_slice(rows, (rows.len() / hidden, hidden), &Device::Cpu)
                    .and_then(|w| h.matmul(&w.t()?));
                match product {
                    Ok(p) if failed.is_none() => parts.push(p),
                    Ok(_) => {}
                    Err(e) => failed = Some(e),
                }
                Ok(())
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        } else {
            for chunk in &self.head_chunks {
                parts.push(h.matmul(chunk)?);
            }
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Runs `tokens` (positions `cache.len()..`) through the model; returns logits `[T, vocab]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, tap: Tap) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(RuntimeError::Input("no tokens to run".into()));
        }
        let mut x = self.embed(tokens)?;
        for l in 0..self.spec.layers {
            tap(&format!("residual.{l}"), &x);
            x = self.layer_with(&*self.layer_weights(l)?, l, &x, cache, tap)?;
        }
        tap(&format!("residual.{}", self.spec.layers), &x);
        self.logits(&x)
    }

    /// Logits of a whole prompt at once, as a row-major `[T, vocab]` vector.
    pub fn prompt_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let logits = self.forward(tokens, &mut KvCache::default(), &mut no_tap())?;
        Ok(logits.flatten_all()?.to_vec1()?)
    }

    /// Greedy decoding with the KV cache: the prompt at once, then one token at a time.
    pub fn greedy(&self, prompt: &[u32], new_tokens: usize, eos: &[u32]) -> Result<Vec<u32>> {
        let mut cache = KvCache::default();
        let mut out = Vec::new();
        let mut input = prompt.to_vec();
        for _ in 0..new_tokens {
            let logits = self.forward(&input, &mut cache, &mut no_tap())?;
            let last: Vec<f32> = logits.get(logits.dims()[0] - 1)?.to_vec1()?;
            let next = crate::parity::argmax(&last) as u32;
            out.push(next);
            if eos.contains(&next) {
                break;
            }
            input = vec![next];
        }
        Ok(out)
    }
}

/// Several prompts through the reference one decoder layer at a time: each layer's weights are
/// obtained once (decoded from the checkpoint when streamed), every prompt goes through it, and
/// they are dropped before the next. Each prompt's numbers are the bits [`Reference::forward`]
/// gives it alone: a prompt's computation never mixes with another's.
pub struct LayerByLayer<'r> {
    reference: &'r Reference,
    /// Each prompt's residual stream entering layer `next`.
    residuals: Vec<Tensor>,
    next: usize,
}

impl<'r> LayerByLayer<'r> {
    pub fn new(reference: &'r Reference, prompts: &[Vec<u32>]) -> Result<LayerByLayer<'r>> {
        let residuals = prompts
            .iter()
            .map(|p| {
                if p.is_empty() {
                    return Err(RuntimeError::Input("no tokens to run".into()));
                }
                reference.embed(p)
            })
            .collect::<Result<_>>()?;
        Ok(LayerByLayer { reference, residuals, next: 0 })
    }

    /// The layer the next [`step`](Self::step) runs (the model's layer count when done).
    pub fn layer(&self) -> usize {
        self.next
    }

    /// Prompt `p`'s residual stream entering layer [`layer`](Self::layer) (`residual.{layer}`).
    pub fn residual(&self, p: usize) -> &Tensor {
        &self.residuals[p]
    }

    /// Runs every prompt through the next layer; `tap(p, name, value)` sees prompt `p`'s
    /// intermediate values under [`Tap`]'s names.
    pub fn step(&mut self, tap: &mut dyn FnMut(usize, &str, &Tensor)) -> Result<()> {
        let l = self.next;
        let weights = self.reference.layer_weights(l)?;
        for (p, x) in self.residuals.iter_mut().enumerate() {
            // A prompt's keys and values are needed only within this layer.
            let mut cache = KvCache::default();
            *x = self
                .reference
                .layer_with(&weights, l, x, &mut cache, &mut |name: &str, t: &Tensor| tap(p, name, t))?;
        }
        self.next += 1;
        Ok(())
    }

    /// Prompt `p`'s logits `[T, vocab]`, once every layer has run.
    pub fn logits(&self, p: usize) -> Result<Tensor> {
        if self.next != self.reference.spec.layers {
            return Err(RuntimeError::Input(format!(
                "logits asked for after {} of {} layers",
                self.next, self.reference.spec.layers
            )));
        }
        self.reference.logits(&self.residuals[p])
    }
}

/// softmax over the last dimension, in f32, stable (max subtracted first).
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}
