//! RoPE tables shared by the reference and the runtime: transformers' default RoPE,
//! `inv_freq[i] = 1 / theta^(2i/d)` in f32, angle = position · inv_freq, and each table row holds
//! `cat(freqs, freqs)` so element j pairs with j + d/2 (half-split, `rotate_half`).

/// `(cos, sin)`, each `[positions, head_dim]` row-major.
pub fn tables(head_dim: usize, theta: f32, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(positions * head_dim);
    let mut sin = Vec::with_capacity(positions * head_dim);
    for pos in 0..positions {
        for _ in 0..2 {
            for &f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
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
