//! Perplexity of a token stream, and the KL divergence of one engine's next-token distributions
//! against another's, windowed as llama.cpp's perplexity tool does.
//!
//! The stream is cut into non-overlapping windows of `ctx` tokens (a partial last window is
//! dropped); each window's first token is replaced by BOS, the window runs as one prompt, and the
//! tokens in its second half are scored, each given at least `ctx/2` tokens of context. The same
//! windowing is what scripts/train_demo.py uses for transformers' golden perplexity.

use crate::model::{Model, Session, Want};
use crate::parity::{argmax, log_softmax};
use crate::reference::Reference;
use crate::{Result, RuntimeError};

/// Anything that gives the logits of every position of a window (`[T, vocab]`, row-major).
pub trait LogitSource {
    fn vocab(&self) -> usize;
    fn window_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
}

/// tern's runtime on a GGUF file; the KV cache is reset for each window.
pub struct RuntimeSource<'m> {
    session: Session<'m>,
}

impl<'m> RuntimeSource<'m> {
    pub fn new(model: &'m Model, ctx: usize) -> RuntimeSource<'m> {
        RuntimeSource { session: Session::new(model, ctx) }
    }
}

impl LogitSource for RuntimeSource<'_> {
    fn vocab(&self) -> usize {
        self.session.model.config.vocab
    }

    fn window_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.session.reset();
        self.session.forward(tokens, Want::All, None)
    }
}

/// tern's f32 reference forward (transformers' semantics) on a checkpoint folder.
pub struct ReferenceSource<'r>(pub &'r Reference);

impl LogitSource for ReferenceSource<'_> {
    fn vocab(&self) -> usize {
        self.0.spec.vocab
    }

    fn window_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.0.prompt_logits(tokens)
    }
}

/// The scores of one window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowScore {
    pub index: usize,
    /// Mean negative log-likelihood of the scored tokens, nats.
    pub nll: f64,
    pub perplexity: f64,
    /// Perplexity over this and every earlier window (what llama.cpp prints as it goes).
    pub running_perplexity: f64,
    /// Against the KL reference, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<KlScore>,
    /// ln p(token) of each scored token (not serialised: large; the library's callers use it).
    #[serde(skip)]
    pub logprobs: Vec<f64>,
}

/// KL(reference ‖ model) and top-1 agreement over a set of scored positions.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct KlScore {
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Share of positions whose most likely token is the same in both.
    pub top1_agreement: f64,
    pub positions: usize,
    /// The reference's own perplexity over these positions.
    pub reference_perplexity: f64,
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub ctx: usize,
    pub tokens: usize,
    pub windows: usize,
    pub scored_tokens: usize,
    pub nll: f64,
    pub perplexity: f64,
    /// ± one standard error of the perplexity (from the spread of the per-token NLLs).
    pub perplexity_stderr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<KlScore>,
    pub per_window: Vec<WindowScore>,
}

/// How many whole windows of `ctx` tokens a stream of `n_tokens` holds.
pub fn window_count(n_tokens: usize, ctx: usize) -> usize {
    n_tokens / ctx
}

/// The tokens window `k` runs: `ids[k*ctx .. (k+1)*ctx]` with the first replaced by `bos`.
pub fn window(ids: &[u32], k: usize, ctx: usize, bos: Option<u32>) -> Vec<u32> {
    let mut w = ids[k * ctx..(k + 1) * ctx].to_vec();
    if let Some(b) = bos {
        w[0] = b;
    }
    w
}

/// KL, top-1 and the reference's NLL summed over positions: one window's, or the whole run's.
#[derive(Default)]
struct KlSums {
    kl: f64,
    max_kl: f64,
    agree: usize,
    ref_nll: f64,
    positions: usize,
}

impl KlSums {
    fn add(&mut self, other: &KlSums) {
        self.kl += other.kl;
        self.max_kl = self.max_kl.max(other.max_kl);
        self.agree += other.agree;
        self.ref_nll += other.ref_nll;
        self.positions += other.positions;
    }

    fn score(&self) -> KlScore {
        let n = self.positions.max(1) as f64;
        KlScore {
            mean_kl: self.kl / n,
            max_kl: self.max_kl,
            top1_agreement: self.agree as f64 / n,
            positions: self.positions,
            reference_perplexity: (self.ref_nll / n).exp(),
        }
    }
}

/// Scores `ids` (already tokenised, BOS first) with `model`, and against `reference` when given.
/// `on_window` sees each window as it finishes (progress bars).
pub fn perplexity(
    ids: &[u32],
    ctx: usize,
    bos: Option<u32>,
    model: &mut (dyn LogitSource + '_),
    mut reference: Option<&mut (dyn LogitSource + '_)>,
    mut on_window: impl FnMut(&WindowScore),
) -> Result<PerplexityReport> {
    if ctx < 2 {
        return Err(RuntimeError::Input(format!("--ctx {ctx} is too small: it must be at least 2")));
    }
    let n_windows = window_count(ids.len(), ctx);
    if n_windows == 0 {
        return Err(RuntimeError::Input(format!(
            "the text has {} tokens, fewer than one window of --ctx {ctx}; give a longer text or a smaller --ctx",
            ids.len()
        )));
    }
    let vocab = model.vocab();
    if let Some(r) = reference.as_deref()
        && r.vocab() != vocab
    {
        return Err(RuntimeError::Input(format!(
            "the model's vocabulary has {vocab} entries and the KL reference's {}; they must match",
            r.vocab()
        )));
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(RuntimeError::Input(format!("token id {bad} is outside the vocabulary of {vocab}")));
    }
    let first = ctx / 2;
    let (mut all_nll, mut per_window) = (Vec::new(), Vec::with_capacity(n_windows));
    let (mut nll_sum, mut total_kl) = (0.0f64, KlSums::default());
    for k in 0..n_windows {
        let tokens = window(ids, k, ctx, bos);
        let logits = model.window_logits(&tokens)?;
        let ref_logits = reference.as_deref_mut().map(|r| r.window_logits(&tokens)).transpose()?;
        let mut logprobs = Vec::with_capacity(ctx - first);
        let mut window_kl = KlSums::default();
        // Position p predicts token p + 1.
        for p in first - 1..ctx - 1 {
            let row = &logits[p * vocab..(p + 1) * vocab];
            let lp = log_softmax(row);
            let target = tokens[p + 1] as usize;
            logprobs.push(lp[target]);
            if let Some(r) = &ref_logits {
                let ref_row = &r[p * vocab..(p + 1) * vocab];
                let lq = log_softmax(ref_row);
                let kl = lq.iter().zip(&lp).map(|(&a, &b)| a.exp() * (a - b)).sum::<f64>().max(0.0);
                window_kl.add(&KlSums {
                    kl,
                    max_kl: kl,
                    agree: (argmax(ref_row) == argmax(row)) as usize,
                    ref_nll: -lq[target],
                    positions: 1,
                });
            }
        }
        let nll = -logprobs.iter().sum::<f64>() / logprobs.len() as f64;
        all_nll.extend(logprobs.iter().map(|&l| -l));
        nll_sum += nll * logprobs.len() as f64;
        let running = (nll_sum / all_nll.len() as f64).exp();
        let kl = ref_logits.is_some().then(|| window_kl.score());
        total_kl.add(&window_kl);
        let score =
            WindowScore { index: k, nll, perplexity: nll.exp(), running_perplexity: running, kl, logprobs };
        on_window(&score);
        per_window.push(score);
    }
    let n = all_nll.len() as f64;
    let mean = nll_sum / n;
    let var = all_nll.iter().map(|&x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let ppl = mean.exp();
    let kl = reference.is_some().then(|| total_kl.score());
    Ok(PerplexityReport {
        ctx,
        tokens: ids.len(),
        windows: n_windows,
        scored_tokens: all_nll.len(),
        nll: mean,
        perplexity: ppl,
        perplexity_stderr: ppl * (var / n).sqrt(),
        kl,
        per_window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose logits make token (p + 1) % vocab twice as likely as each other token
    /// at position p, so the expected figures follow by hand.
    struct Fixed {
        vocab: usize,
        boost: f32,
    }

    impl LogitSource for Fixed {
        fn vocab(&self) -> usize {
            self.vocab
        }
        fn window_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
            let mut out = vec![0.0; tokens.len() * self.vocab];
            for p in 0..tokens.len() {
                out[p * self.vocab + (p + 1) % self.vocab] = self.boost;
            }
            Ok(out)
        }
    }

    #[test]
    fn windows_replace_the_first_token_and_drop_the_tail() {
        let ids: Vec<u32> = (10..21).collect();
        assert_eq!(window_count(ids.len(), 4), 2);
        assert_eq!(window(&ids, 1, 4, Some(0)), vec![0, 15, 16, 17]);
        assert_eq!(window(&ids, 0, 4, None), vec![10, 11, 12, 13]);
    }

    #[test]
    fn hand_computed_perplexity_and_kl() {
        // vocab 4, boost ln 2: the boosted token has p = 2/5, the others 1/5.
        let vocab = 4;
        let mut model = Fixed { vocab, boost: 2f32.ln() };
        // Stream whose scored tokens (positions 2, 3 of each 4-token window) are p+1 % 4 = 2, 3:
        // every scored token is the boosted one.
        let ids = vec![1, 1, 2, 3, 1, 1, 2, 3];
        let r = perplexity(&ids, 4, Some(0), &mut model, None, |_| {}).unwrap();
        assert_eq!((r.windows, r.scored_tokens), (2, 4));
        assert!((r.perplexity - 2.5).abs() < 1e-6, "{}", r.perplexity); // ln 2 rounded to f32
        assert!(r.perplexity_stderr.abs() < 1e-9);
        // Against a uniform reference: KL(u ‖ q) = Σ ¼ ln(¼ / q) = ¼ ln(5/8) + ¾ ln(5/4).
        let mut uniform = Fixed { vocab, boost: 0.0 };
        let r = perplexity(&ids, 4, Some(0), &mut model, Some(&mut uniform), |_| {}).unwrap();
        let kl = r.kl.unwrap();
        let want = 0.25 * (5.0f64 / 8.0).ln() + 0.75 * (5.0f64 / 4.0).ln();
        assert!((kl.mean_kl - want).abs() < 1e-6 && (kl.max_kl - want).abs() < 1e-6, "{kl:?}");
        assert!((kl.reference_perplexity - 4.0).abs() < 1e-6);
        // The uniform reference's argmax is token 0; the model's is the boosted token (2 or 3).
        assert_eq!(kl.top1_agreement, 0.0);
    }

    #[test]
    fn errors_name_the_problem() {
        let mut model = Fixed { vocab: 4, boost: 0.0 };
        let e = perplexity(&[0, 1, 2], 4, None, &mut model, None, |_| {}).unwrap_err().to_string();
        assert!(e.contains("fewer than one window"), "{e}");
        let e = perplexity(&[0, 9, 2, 1], 4, None, &mut model, None, |_| {}).unwrap_err().to_string();
        assert!(e.contains("token id 9"), "{e}");
        let mut other = Fixed { vocab: 5, boost: 0.0 };
        let e = perplexity(&[0, 1, 2, 3], 4, None, &mut model, Some(&mut other), |_| {}).unwrap_err();
        assert!(e.to_string().contains("must match"), "{e}");
    }
}
