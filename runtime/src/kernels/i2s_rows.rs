//! I2_S rows at load: TL1, TL2, TQ1_0 and TQ2_0 matrices rewritten as I2_S's own rows where the
//! CPU runs AVX2 without trit tiles (no AVX-512). There every product is bound by the core's
//! vector operations, not by memory: I2_S's AVX2 kernels take 13 operations per 128 weights and
//! have the fastest prompt GEMM (the lookup GEMM), while the other layouts' own AVX2 kernels take
//! more per weight than the 1.67-bit ones' sixth fewer bytes can repay (docs/kernels.md, "I2_S
//! rows at load"). TL1's and TQ1_0's codes come from the trit tiles' table decoders, TL2's
//! through its trit tiles; TQ2_0's bytes are I2_S's with each byte's codes reversed (one β per
//! tensor, which the loader checks). The matrix is then an I2_S matrix to every kernel, in the
//! model's tile arena (2 MiB pages, the matrices one forward stream in call order).

use crate::cpu::Isa;
use crate::kernels::trit_tiles::{self, TritTiles};
use crate::pages::{ArenaBytes, TileArena};
use rayon::prelude::*;
use tern_formats::tiles::Tiles;
use tern_formats::{Layout, i2s, tq1_0, tq2_0};

/// Whether matrices of `layout` are rewritten as I2_S rows for `isa`: TL1, TL2, TQ1_0 and TQ2_0
/// on AVX2 (also when forced on an AVX-512 CPU with `TERN_KERNEL=avx2`). `TERN_I2S_ROWS=off` keeps
/// them on their own bytes and kernels, to compare.
pub fn wanted(isa: Isa, layout: Layout) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("TERN_I2S_ROWS").as_deref() == Ok("off"));
    cfg!(target_arch = "x86_64")
        && isa == Isa::Avx2
        && isa.supported()
        && matches!(layout, Layout::TL1 | Layout::TL2 | Layout::TQ1_0 | Layout::TQ2_0)
        && !off
}

/// The I2_S tensor (`i2s::tensor_bytes(m, k)`: rows, then the tail holding β = `scale`) of a
/// TL1, TL2, TQ1_0 or TQ2_0 matrix's file bytes (`m × k`; TL1 and TL2 with their `tiles`; TQ2_0
/// validated, since a code 3 would stay one), in the next bytes of `arena` where given; 16 rows
/// (TL1: a row block) at a time on every thread.
pub fn from_layout_in(
    arena: Option<&TileArena>,
    layout: Layout,
    bytes: &[u8],
    m: usize,
    k: usize,
    tiles: Option<Tiles>,
    scale: f32,
) -> std::io::Result<ArenaBytes> {
    // Where the codes come from: TL1 and TQ1_0 by their tables a row block or a row at a time,
    // TL2 through its trit tiles (which move its nibbles rather than decode them), TQ2_0 by block.
    let trits = match layout {
        Layout::TL2 => Some(TritTiles::from_layout(layout, bytes, m, k, tiles)?),
        _ => None,
    };
    let (quads, digits) = match layout {
        Layout::TL1 => (trit_tiles::tl1_quads(), Vec::new()),
        Layout::TQ1_0 => (Vec::new(), trit_tiles::tq1_0_digits()),
        _ => (Vec::new(), Vec::new()),
    };
    let tl1_tiles = tiles.filter(|_| layout == Layout::TL1);
    let task_rows = tl1_tiles.map_or(trit_tiles::TILE_ROWS, |t| t.rows);
    let src_row = match layout {
        Layout::TQ1_0 => k / tq1_0::BLOCK * tq1_0::BLOCK_BYTES,
        _ => k / tq2_0::BLOCK * tq2_0::BLOCK_BYTES,
    };
    let mut out = ArenaBytes::take_from(arena, i2s::tensor_bytes(m, k))?;
    let rb = i2s::row_bytes(k);
    let (body, tail) = out.as_mut_slice().split_at_mut(m * rb);
    tail[..4].copy_from_slice(&scale.to_le_bytes());
    body.par_chunks_mut(task_rows * rb).enumerate().for_each(|(i, dst)| {
        // A TL1 row block's codes, decoded together (its bytes interleave the block's rows).
        let mut block_codes = vec![0i8; if tl1_tiles.is_some() { task_rows * k } else { 0 }];
        if let Some(t) = tl1_tiles {
            trit_tiles::decode_tl1_block(&quads, bytes, k, t, i, &mut block_codes);
        }
        let mut codes = vec![0i8; k];
        for (j, row) in dst.chunks_exact_mut(rb).enumerate() {
            let r = i * task_rows + j;
            match layout {
                Layout::TL1 => codes.copy_from_slice(&block_codes[j * k..][..k]),
                Layout::TL2 => trits.as_ref().expect("TL2 goes through trit tiles").row_codes(r, &mut codes),
                Layout::TQ1_0 => {
                    let blocks = bytes[r * src_row..][..src_row].chunks_exact(tq1_0::BLOCK_BYTES);
                    for (block, out) in blocks.zip(codes.chunks_exact_mut(tq1_0::BLOCK)) {
                        trit_tiles::decode_tq1_0(&digits, block, out);
                    }
                }
                _ => {
                    // TQ2_0's half-block of 128 weights is I2_S's block with the four 2-bit
                    // codes of each byte in reverse order (weight m + 32l in bits 2l, against
                    // bits 6 − 2l), the same codes c = w + 1.
                    let blocks = bytes[r * src_row..][..src_row].chunks_exact(tq2_0::BLOCK_BYTES);
                    for (block, out) in blocks.zip(row.chunks_exact_mut(2 * i2s::BLOCK_BYTES)) {
                        for (o, &b) in out.iter_mut().zip(&block[..2 * i2s::BLOCK_BYTES]) {
                            *o = b >> 6 | (b >> 2 & 0x0C) | (b << 2 & 0x30) | b << 6;
                        }
                    }
                    continue;
                }
            }
            i2s::pack_row(&codes, row);
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::xorshift;

    /// The rows equal `formats::i2s`'s packing of the codes `formats` unpacks from each layout's
    /// bytes (an independent decoder), on shapes with rows left after the last tile of 16, TL2's
    /// pair tail and TQ1_0's several blocks.
    #[test]
    fn rows_equal_i2s_packing_of_the_unpacked_codes() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for (layout, m, k) in [
            (Layout::TL1, 64, 256),
            (Layout::TL1, 96, 384),
            (Layout::TL2, 64, 288),
            (Layout::TL2, 32, 256),
            (Layout::TL2, 96, 480),
            (Layout::TQ1_0, 37, 512),
            (Layout::TQ1_0, 16, 256),
            (Layout::TQ2_0, 37, 512),
            (Layout::TQ2_0, 16, 256),
        ] {
            let codes: Vec<i8> = (0..m * k).map(|_| (next() % 3) as i8 - 1).collect();
            let tiles = layout.fit(m, k).expect("a shape the layout takes");
            let bytes = layout.pack(&codes, m, k, 0.25, tiles);
            let (unpacked, _) = layout.unpack(&bytes, m, k, tiles).expect("unpacks");
            assert_eq!(unpacked, codes, "{} {m}x{k}: the formats round trip", layout.name());
            let want = i2s::pack(&unpacked, m, k, 0.25);
            let got = from_layout_in(None, layout, &bytes, m, k, tiles, 0.25).expect("memory");
            assert_eq!(got.as_slice(), &want[..], "{} {m}x{k}", layout.name());
        }
    }
}
