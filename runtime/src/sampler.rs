//! Choosing the next token from logits: repetition penalty, then greedy (temperature 0) or
//! sampling restricted by top-k, top-p (nucleus) and min-p, then temperature, in llama.cpp's order.
//! Seeded, so a fixed seed reproduces a generation exactly.

#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off: drop tokens whose probability is below min_p × the top probability.
    pub min_p: f32,
    /// 1 = off: logits of recently generated tokens are divided (positive) or multiplied
    /// (negative) by this.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

pub struct Sampler {
    pub config: SamplerConfig,
    state: u64,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler { config, state: config.seed ^ 0x9E37_79B9_7F4A_7C15 }
    }

    /// SplitMix64 → uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token. `history` is every token so far (for the repetition penalty).
    ///
    /// Order as llama.cpp's default chain: penalty → top-k → top-p → min-p (both on the
    /// temperature-1 distribution) → temperature → draw. NaN logits never win; +inf wins.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = self.config;
        if logits.is_empty() {
            return 0;
        }
        let mut logits: Vec<f32> =
            logits.iter().map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l }).collect();
        if c.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(c.repeat_last_n);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / c.repeat_penalty } else { *l * c.repeat_penalty };
                }
            }
        }
        let greedy = crate::parity::argmax(&logits) as u32;
        if c.temperature <= 0.0 || logits[greedy as usize] == f32::INFINITY {
            return greedy;
        }
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if c.top_k > 0 && c.top_k < cand.len() {
            // Partial selection: only the top k are sorted, not the whole vocabulary.
            cand.select_nth_unstable_by(c.top_k - 1, by_logit);
            cand.truncate(c.top_k);
        }
        cand.sort_unstable_by(by_logit);
        let max = cand[0].1;
        let softmax = |cand: &[(u32, f32)], t: f32| -> Vec<f64> {
            let e: Vec<f64> = cand.iter().map(|&(_, l)| (((l - max) / t) as f64).exp()).collect();
            let total: f64 = e.iter().sum();
            e.into_iter().map(|p| p / total).collect()
        };
        let probs = softmax(&cand, 1.0);
        let mut keep = probs.len();
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            keep = probs
                .iter()
                .position(|&p| {
                    acc += p;
                    acc >= c.top_p as f64
                })
                .map_or(keep, |i| i + 1);
        }
        if c.min_p > 0.0 {
            let floor = probs[0] * c.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        cand.truncate(keep.max(1));
        let probs = softmax(&cand, c.temperature);
        if !probs.iter().all(|p| p.is_finite()) {
            return greedy;
        }
        let mut r = self.uniform();
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> Sampler {
        Sampler::new(SamplerConfig { temperature, top_k, top_p, min_p, seed, ..SamplerConfig::default() })
    }

    #[test]
    fn greedy_and_degenerate_filters_pick_the_argmax() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(sampler(0.0, 0, 1.0, 0.0, 1).sample(&logits, &[]), 1);
        assert_eq!(sampler(5.0, 1, 1.0, 0.0, 1).sample(&logits, &[]), 1);
        assert_eq!(sampler(5.0, 0, 1e-6, 0.0, 1).sample(&logits, &[]), 1);
    }

    #[test]
    fn repetition_penalty_demotes_recent_tokens() {
        let mut s = Sampler::new(SamplerConfig { repeat_penalty: 1.5, ..SamplerConfig::default() });
        // 2.0 / 1.5 = 1.33 < 1.9: token 2 wins once token 1 was just generated.
        assert_eq!(s.sample(&[0.1, 2.0, 1.9, -1.0], &[1]), 2);
    }

    /// Frequencies follow softmax(logits / T) (hand-computed), and a seed reproduces a run.
    #[test]
    fn samples_follow_the_distribution_and_seeds_repeat() {
        // logits ln(1), ln(2), ln(3), ln(4) at T = 1: probabilities 0.1, 0.2, 0.3, 0.4.
        let logits: Vec<f32> = [1f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
        let mut s = sampler(1.0, 0, 1.0, 0.0, 42);
        let mut counts = [0usize; 4];
        let draws: Vec<u32> = (0..20_000).map(|_| s.sample(&logits, &[])).collect();
        draws.iter().for_each(|&d| counts[d as usize] += 1);
        for (i, c) in counts.iter().enumerate() {
            let p = *c as f64 / 20_000.0;
            assert!((p - 0.1 * (i + 1) as f64).abs() < 0.015, "token {i}: {p}");
        }
        let mut again = sampler(1.0, 0, 1.0, 0.0, 42);
        assert!(draws.iter().take(100).all(|&d| d == again.sample(&logits, &[])));
        // min_p 0.5 keeps tokens with p ≥ 0.2 (= 0.5 × 0.4): never token 0; top_p 0.7 keeps 3, 2
        // (filters see the temperature-1 probabilities, so a high temperature does not widen them).
        let mut m = sampler(1.0, 0, 1.0, 0.5, 7);
        assert!((0..2000).all(|_| m.sample(&logits, &[]) != 0));
        let mut p = sampler(1.0, 0, 0.7, 0.0, 7);
        assert!((0..2000).all(|_| p.sample(&logits, &[]) >= 2));
        let mut hot = sampler(50.0, 0, 0.7, 0.0, 7);
        assert!((0..2000).all(|_| hot.sample(&logits, &[]) >= 2));
    }

    #[test]
    fn non_finite_logits_are_handled() {
        // NaN never wins, in greedy or sampled mode.
        assert_eq!(sampler(0.0, 0, 1.0, 0.0, 1).sample(&[f32::NAN, 1.0, 0.5], &[]), 1);
        let mut s = sampler(1.0, 0, 1.0, 0.05, 3);
        assert!((0..200).all(|_| s.sample(&[f32::NAN, 1.0, 0.5], &[]) != 0));
        // +inf always wins.
        assert_eq!(sampler(1.0, 0, 1.0, 0.0, 1).sample(&[0.0, f32::INFINITY, 2.0], &[]), 1);
    }
}
