//! The output of the forward pass: the final norm and the head (`lm_head`, or the tied
//! embedding) for the rows that want logits — F16 rows dotted in f32, Q8_0/Q4_0 rows in
//! integers against the normed state quantised once, other types decoded row by row.

use super::forward::Session;
use super::norm::rms_norm;
use super::weights::FloatMatrix;
use crate::cpu;
use crate::kernels::{float, head};
use tern_formats::{TensorType, float_blocks};

/// Output-head rows per task; on Intel each task reads them as four quarter streams. 256 rather
/// than 64: longer streams and fewer tasks bring every head type closer to the bandwidth ceiling
/// (docs/performance-notes.md, "Row chunks").
const HEAD_CHUNK_ROWS: usize = 256;

impl Session<'_> {
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
        let head_positions = if integer_head && n > 1 { head::dot_positions_fn(isa, m.ty) } else { None };
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
            if let Some(dot_positions) = head_positions {
                // Several positions on an integer head: each block decoded once for all.
                let rows = self.model.float_rows(m, chunk * HEAD_CHUNK_ROWS, o.len() / n);
                dot_positions(rows, &head_acts, o);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
