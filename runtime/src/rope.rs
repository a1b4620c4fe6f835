//! RoPE tables shared by the reference and the runtime: transformers' default RoPE,
//! `inv_freq[i] = 1 / theta^(2i/d)` in f32, angle = position · inv_freq, and each table row holds
//! `cat(freqs, freqs)` so element j pairs with j + d/2 (half-split, `rotate_half`).

/// `(cos, sin)`, each `[positions, head_dim]` row-major.
pub fn tables(head_dim: usize, theta: f32, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    extend_tables(head_dim, theta, positions, &mut cos, &mut sin);
    (cos, sin)
}

/// Appends the rows of positions `cos.len() / head_dim .. positions` to tables built by
/// [`tables`] (each row depends on its position only, so tables grown as a session advances are
/// the same numbers; a 4096-position table for 2B-4T holds 4 MB a short session never reads).
pub fn extend_tables(head_dim: usize, theta: f32, positions: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
    // Called by every layer of every forward pass: nothing to do (and no frequencies to compute)
    // once the rows exist.
    if cos.len() >= positions * head_dim {
        return;
    }
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    for pos in cos.len() / head_dim.max(1)..positions {
        for _ in 0..2 {
            for &f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
}

/// Rotates one head vector in place with the table rows of its position.
pub fn apply(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for j in 0..half {
        let (a, b) = (x[j], x[j + half]);
        x[j] = a * cos[j] - b * sin[j];
        x[j + half] = b * cos[j + half] + a * sin[j + half];
    }
}

/// The interleaved pairing (llama.cpp's arch `llama`): element 2i rotates with 2i + 1 by the
/// angle of frequency i. On q/k rows permuted as [`tern_converters::model::RopePairing`]
/// describes, this computes exactly what [`apply`] computes on the unpermuted rows.
pub fn apply_interleaved(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (i, pair) in x.chunks_exact_mut(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cos[i] - b * sin[i];
        pair[1] = b * cos[i] + a * sin[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_converters::model::RopePairing;

    #[test]
    fn interleaved_on_permuted_rows_equals_half_split_on_hf_rows() {
        let d = 16;
        let (cos, sin) = tables(d, 10_000.0, 7);
        let hf: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin() * 3.0 + 0.5).collect();
        let pos = 6 * d;
        let mut expected = hf.clone();
        apply(&mut expected, &cos[pos..pos + d], &sin[pos..pos + d]);
        let mut stored = RopePairing::Interleaved.reorder(&hf, d, 1);
        apply_interleaved(&mut stored, &cos[pos..pos + d], &sin[pos..pos + d]);
        // Bit for bit: the same products in the same order, only at other indices.
        assert_eq!(stored, RopePairing::Interleaved.reorder(&expected, d, 1));
        assert_ne!(stored, expected);
    }

    /// Tables grown in steps are the tables built at once, and row p holds cos/sin(p·θ^(−2i/d)).
    #[test]
    fn grown_tables_equal_whole_ones() {
        let (d, theta) = (8, 500_000.0f32);
        let whole = tables(d, theta, 9);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for step in [1, 1, 4, 4, 9] {
            extend_tables(d, theta, step, &mut cos, &mut sin);
        }
        assert_eq!((cos.clone(), sin), whole);
        let angle = 7.0f64 / (theta as f64).powf(2.0 * 3.0 / 8.0);
        assert!((cos[7 * d + 3] as f64 - angle.cos()).abs() < 1e-6 && cos[7 * d + 3] == cos[7 * d + 7]);
    }
}
