//! Numeric parity of a packed GGUF against the f32 reference forward on its source checkpoint
//! (loaded with `Arithmetic::Exact`, the form a correct integer kernel computes):
//! per-layer residual error (teacher forced — each runtime layer fed the reference's input — and
//! free running), and logits rel-L2, max abs, top-1 agreement and KL per prompt. Thresholds are
//! in docs/reference.md; teacher forcing keeps int8 rounding flips local, so it is the per-layer
//! check; free-running errors are reported, not judged.

use crate::model::{Model, Session, Want};
use crate::parity::{LogitsReport, Thresholds, compare_logits, rel_l2};
use crate::reference::{KvCache, Reference};
use crate::tokenizer::Tokenizer;
use crate::{Result, RuntimeError};
use candle_core::Tensor;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    pub thresholds: Thresholds,
    /// Every teacher-forced layer's rel-L2 must stay below this.
    pub max_layer_rel_l2: f64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { thresholds: Thresholds::default(), max_layer_rel_l2: 5e-3 }
    }
}

#[derive(Debug, Clone)]
pub struct LayerReport {
    pub layer: usize,
    /// Worst over prompts.
    pub teacher_forced: f64,
    pub free_running: f64,
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub prompts: Vec<Vec<u32>>,
    pub logits: Vec<LogitsReport>,
    pub layers: Vec<LayerReport>,
    /// Why parity fails, or None.
    pub failure: Option<String>,
}

/// Built-in prompts: a few sentences when the model has a tokenizer, plus pseudo-random ids over
/// the whole vocabulary the tokenizer knows (so every part of the embedding can be exercised).
pub fn default_prompts(vocab: usize, tokenizer: Option<&Tokenizer>) -> Result<Vec<Vec<u32>>> {
    let mut prompts = Vec::new();
    let mut limit = vocab;
    if let Some(tk) = tokenizer {
        for text in [
            "The capital of France is Paris. The capital of Italy is",
            "Ternary weights are -1, 0 or +1, so a matrix product needs only additions.",
        ] {
            prompts.push(tk.encode(text, true)?);
        }
        limit = tk.token_count().clamp(1, vocab);
    }
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for len in [16usize, 40] {
        prompts.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % limit as u64) as u32
                })
                .collect(),
        );
    }
    Ok(prompts)
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1()?)
}

pub fn verify(
    model: &Model,
    reference: &Reference,
    prompts: &[Vec<u32>],
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let (c, s) = (&model.config, &reference.spec);
    if (c.vocab, c.hidden, c.layers, c.heads, c.kv_heads, c.intermediate)
        != (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.intermediate)
    {
        return Err(RuntimeError::Input(format!(
            "the GGUF ({} layers, hidden {}, vocab {}) and the checkpoint ({} layers, hidden {}, vocab {}) are different models",
            c.layers, c.hidden, c.vocab, s.layers, s.hidden, s.vocab
        )));
    }
    let mut layers: Vec<LayerReport> =
        (0..c.layers).map(|layer| LayerReport { layer, teacher_forced: 0.0, free_running: 0.0 }).collect();
    let mut logits = Vec::new();
    for tokens in prompts {
        if tokens.is_empty() || tokens.len() > c.context {
            return Err(RuntimeError::Input(format!(
                "a prompt must have 1 to {} tokens, got {}",
                c.context,
                tokens.len()
            )));
        }
        // Reference, with every residual.
        let mut ref_res: HashMap<String, Tensor> = HashMap::new();
        let ref_logits =
            reference.forward(tokens, &mut KvCache::default(), &mut |name: &str, t: &Tensor| {
                if name.starts_with("residual.") {
                    ref_res.insert(name.to_string(), t.clone());
                }
            })?;
        let ref_res: HashMap<String, Vec<f32>> =
            ref_res.iter().map(|(k, v)| Ok((k.clone(), flat(v)?))).collect::<Result<_>>()?;
        // Runtime, free running.
        let mut rt_res: HashMap<String, Vec<f32>> = HashMap::new();
        let mut session = Session::new(model, tokens.len());
        let rt_logits = session.forward(
            tokens,
            Want::All,
            Some(&mut |name: &str, x: &[f32]| {
                rt_res.insert(name.to_string(), x.to_vec());
            }),
        )?;
        for (l, report) in layers.iter_mut().enumerate() {
            let key = format!("residual.{}", l + 1);
            report.free_running = report.free_running.max(rel_l2(&rt_res[&key], &ref_res[&key]));
            // Teacher forced: the runtime's layer l on the reference's input of layer l.
            let mut x = ref_res[&format!("residual.{l}")].clone();
            let mut fresh = Session::new(model, tokens.len());
            fresh.layer(l, &mut x)?;
            report.teacher_forced = report.teacher_forced.max(rel_l2(&x, &ref_res[&key]));
        }
        logits.push(compare_logits(&rt_logits, &flat(&ref_logits)?, c.vocab, opts.thresholds.min_gap));
    }
    let failure = layers
        .iter()
        .find(|l| l.teacher_forced > opts.max_layer_rel_l2)
        .map(|l| {
            format!(
                "layer {} (teacher forced) rel-L2 {:.3e} > {:.1e}",
                l.layer, l.teacher_forced, opts.max_layer_rel_l2
            )
        })
        .or_else(|| opts.thresholds.failure(&logits));
    Ok(VerifyReport { prompts: prompts.to_vec(), logits, layers, failure })
}
