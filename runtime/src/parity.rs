//! Comparing logits (or any activations) between two implementations: the numbers `tern verify`
//! and the tests report, and the thresholds that decide pass or fail.
//!
//! Why not exact equality: every BitLinear quantises its input to int8 per token, so a 1-ulp
//! difference that moves some `x·s` across a `k + 0.5` boundary flips one code and the network is
//! piecewise constant; two correct f32 implementations agree to ~1e-6 on most positions and
//! differ by up to ~1e-2 relative on a few (docs/reference.md).

/// ‖a − b‖₂ / ‖b‖₂ (b is the reference).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared tensors differ in size");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).fold(0.0, f64::max)
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Gap between the largest and second-largest value of a row.
pub fn top2_gap(row: &[f32]) -> f32 {
    let best = argmax(row);
    let second = row.iter().enumerate().filter(|&(i, _)| i != best).map(|(_, &v)| v).fold(f32::MIN, f32::max);
    row[best] - second
}

/// ln softmax of one logit row, in f64 (max subtracted first).
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let lse = row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(p_ref ‖ p_test) of the softmax distributions of two logit rows, in nats.
pub fn kl_divergence(test: &[f32], reference: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(reference), log_softmax(test));
    lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

/// The comparison of one prompt's logits `[T, vocab]`.
#[derive(Debug, Clone)]
pub struct LogitsReport {
    pub rel_l2: f64,
    pub max_abs: f64,
    /// Positions whose argmax agrees, among positions where the reference's top-2 gap exceeds
    /// `min_gap` (a near-tie may flip legitimately).
    pub top1_agree: usize,
    pub top1_considered: usize,
    pub mean_kl: f64,
}

/// Compares `test` against `reference`, both row-major `[positions, vocab]`.
pub fn compare_logits(test: &[f32], reference: &[f32], vocab: usize, min_gap: f32) -> LogitsReport {
    let mut agree = 0;
    let mut considered = 0;
    let mut kl = 0.0;
    let rows = reference.len() / vocab;
    for (t, r) in test.chunks_exact(vocab).zip(reference.chunks_exact(vocab)) {
        if top2_gap(r) > min_gap {
            considered += 1;
            agree += (argmax(t) == argmax(r)) as usize;
        }
        kl += kl_divergence(t, r);
    }
    LogitsReport {
        rel_l2: rel_l2(test, reference),
        max_abs: max_abs(test, reference),
        top1_agree: agree,
        top1_considered: considered,
        mean_kl: kl / rows.max(1) as f64,
    }
}

/// Pass/fail thresholds for end-to-end logits over a set of prompts (docs/reference.md).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Median over prompts of the per-prompt rel-L2.
    pub median_rel_l2: f64,
    /// Every prompt's rel-L2.
    pub max_rel_l2: f64,
    /// Reference top-2 gap above which top-1 must agree.
    pub min_gap: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { median_rel_l2: 5e-3, max_rel_l2: 2e-2, min_gap: 1e-2 }
    }
}

impl Thresholds {
    /// Why a set of per-prompt reports fails, or None when it passes.
    pub fn failure(&self, reports: &[LogitsReport]) -> Option<String> {
        let mut rels: Vec<f64> = reports.iter().map(|r| r.rel_l2).collect();
        rels.sort_by(f64::total_cmp);
        let median = if rels.is_empty() { 0.0 } else { rels[rels.len() / 2] };
        let worst = rels.last().copied().unwrap_or(0.0);
        if median > self.median_rel_l2 {
            return Some(format!("median logits rel-L2 {median:.3e} > {:.1e}", self.median_rel_l2));
        }
        if worst > self.max_rel_l2 {
            return Some(format!("worst logits rel-L2 {worst:.3e} > {:.1e}", self.max_rel_l2));
        }
        if let Some((i, r)) = reports.iter().enumerate().find(|(_, r)| r.top1_agree < r.top1_considered) {
            return Some(format!(
                "prompt {i}: top-1 differs at {} of {} clear positions",
                r.top1_considered - r.top1_agree,
                r.top1_considered
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_metrics() {
        assert_eq!(rel_l2(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((rel_l2(&[3.0, 5.0], &[3.0, 4.0]) - 0.2).abs() < 1e-12);
        assert_eq!(max_abs(&[1.0, -2.0], &[1.5, 2.0]), 4.0);
        assert_eq!(argmax(&[0.0, 3.0, 1.0]), 1);
        assert_eq!(top2_gap(&[0.0, 3.0, 1.0]), 2.0);
        assert!(kl_divergence(&[1.0, 2.0], &[1.0, 2.0]).abs() < 1e-12);
        // KL([.5,.5] ‖ softmax([0, ln 3]) = [.25,.75]) = .5 ln 2 + .5 ln(2/3).
        let kl = kl_divergence(&[0.0, 3f32.ln()], &[0.0, 0.0]);
        assert!((kl - (0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln())).abs() < 1e-6);
    }

    #[test]
    fn thresholds_reject_a_bad_prompt() {
        let ok = LogitsReport { rel_l2: 1e-3, max_abs: 0.0, top1_agree: 3, top1_considered: 3, mean_kl: 0.0 };
        let bad = LogitsReport { rel_l2: 3e-2, ..ok.clone() };
        let t = Thresholds::default();
        assert!(t.failure(&[ok.clone(), ok.clone(), ok.clone()]).is_none());
        assert!(t.failure(&[ok.clone(), ok.clone(), bad]).unwrap().contains("worst"));
        let flip = LogitsReport { top1_agree: 2, ..ok.clone() };
        assert!(t.failure(&[ok.clone(), flip]).unwrap().contains("top-1"));
    }
}
