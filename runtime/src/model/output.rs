//! The output of the forward pass: the final norm and the head (`lm_head`, or the tied
//! embedding) for the rows that want logits — F16 rows dotted in f32, a Q8_0/Q4_0 head's tiles
//! in integers against the normed state quantised once, other types decoded row by row.

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
        // A Q8_0/Q4_0 head runs integer dots of its tiles against the normed state quantised once
        // per position; other block-quantised rows (other tools' files) are decoded per row,
        // then dotted in f32.
        let integer_head = self.model.output_tiles.as_ref().map(|tiles| {
            (
                tiles,
                head::Kernel::for_isa(isa),
                h.chunks_exact(c.hidden).map(head::HeadActs::quantise).collect::<Vec<_>>(),
            )
        });
        let decode_rows = !matches!(m.ty, TensorType::F16 | TensorType::F32);
        let four_streams = cpu::weight_streams() == 4;
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
            if let Some((tiles, kernel, acts)) = &integer_head {
                // Every position against each tile block, decoded once for all of them.
                head::dot_rows(*kernel, tiles, chunk * HEAD_CHUNK_ROWS, acts, o);
                return;
            }
            let mut decoded = vec![0f32; if decode_rows { m.cols } else { 0 }];
            let mut slots: Vec<&mut [f32]> = o.chunks_exact_mut(n).collect();
            for i in quarter_order(slots.len(), four_streams) {
                let slot = &mut *slots[i];
                let row = self.model.float_row(m, chunk * HEAD_CHUNK_ROWS + i);
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
