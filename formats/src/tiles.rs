//! Tile parameters of bitnet.cpp's lookup-table layouts (TL1, TL2): `BM` rows per row block,
//! `BK` columns per K block, `bm` rows per sub-tile (bitnet.cpp's `kernel_config.ini` keys `bm`,
//! `bk`, `bmm`). bitnet.cpp bakes them into kernels generated per model; tern chooses them by
//! the rule in [`choose`] and records them in the file (`tern.tiles`), so its runtime never
//! guesses. Presets and constraints: microsoft/BitNet `setup_env.py`, `codegen_tl{1,2}.py`,
//! `convert-hf-to-gguf-bitnet.py` (see docs/formats.md).

use crate::layout::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiles {
    /// `BM`: rows per row block.
    pub rows: usize,
    /// `BK`: columns per K block.
    pub cols: usize,
    /// `bm`: rows per sub-tile.
    pub sub_rows: usize,
}

/// bitnet.cpp's presets as (layout, M, K) → (BM, BK, bm), from `setup_env.py` for
/// bitnet_b1_58-large, bitnet_b1_58-3B and Llama3-8B-1.58 (also used for Falcon3).
const PRESETS: &[(Layout, usize, usize, [usize; 3])] = &[
    (Layout::TL1, 1536, 4096, [256, 128, 32]),
    (Layout::TL1, 1536, 1536, [128, 64, 64]),
    (Layout::TL1, 4096, 1536, [256, 128, 32]),
    (Layout::TL1, 3200, 8640, [160, 64, 32]),
    (Layout::TL1, 3200, 3200, [320, 128, 64]),
    (Layout::TL1, 8640, 3200, [320, 64, 32]),
    (Layout::TL1, 14336, 4096, [256, 128, 32]),
    (Layout::TL1, 4096, 14336, [128, 64, 64]),
    (Layout::TL1, 1024, 4096, [256, 128, 32]),
    (Layout::TL1, 4096, 4096, [128, 64, 64]),
    (Layout::TL2, 1536, 4096, [256, 96, 32]),
    (Layout::TL2, 1536, 1536, [128, 192, 32]),
    (Layout::TL2, 4096, 1536, [256, 96, 32]),
    (Layout::TL2, 3200, 8640, [160, 96, 32]),
    (Layout::TL2, 3200, 3200, [320, 96, 32]),
    (Layout::TL2, 8640, 3200, [320, 96, 32]),
    (Layout::TL2, 14336, 4096, [256, 96, 32]),
    (Layout::TL2, 4096, 14336, [128, 96, 32]),
    (Layout::TL2, 1024, 4096, [256, 96, 32]),
    (Layout::TL2, 4096, 4096, [128, 96, 32]),
];

/// Whether `t` is bitnet.cpp's preset for this shape (it ships kernels for those only).
pub fn is_preset(layout: Layout, m: usize, k: usize, t: Tiles) -> bool {
    PRESETS.iter().any(|&(l, pm, pk, [r, c, s])| {
        (l, pm, pk) == (layout, m, k) && t == Tiles { rows: r, cols: c, sub_rows: s }
    })
}

/// Why `tiles` cannot lay out an `m × k` matrix in `layout`, or Ok.
pub fn check(layout: Layout, m: usize, k: usize, t: Tiles) -> Result<(), String> {
    let Tiles { rows: bm_big, cols: bk, sub_rows: bm } = t;
    let need = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{} {m}x{k} with BM={bm_big} BK={bk} bm={bm}: needs {what}", layout.name()))
        }
    };
    need(m > 0 && k > 0 && bm_big > 0 && bk > 0, "positive sizes")?;
    need(m.is_multiple_of(bm_big), "M % BM == 0")?;
    match layout {
        Layout::TL1 => {
            need(bm == 32 || bm == 64, "bm of 32 or 64")?;
            need(bm_big % bm == 0, "BM % bm == 0")?;
            need(k.is_multiple_of(bk), "K % BK == 0")?;
            need(bk % (256 / bm) == 0, "BK % (256 / bm) == 0")?;
            // The kernels sum one K block of table entries (|v| ≤ 254 per pair) in int16.
            need(bk / 2 * 254 <= i16::MAX as usize, "BK ≤ 256")
        }
        Layout::TL2 => {
            need(bm == 32, "bm == 32")?;
            need(bm_big % 32 == 0, "BM % 32 == 0")?;
            need(bk % 24 == 0, "BK % 24 == 0")?;
            need((k % bk).is_multiple_of(32), "(K % BK) % 32 == 0")?;
            need(k >= 256 && k % bk <= 256, "K ≥ 256 and K % BK ≤ 256 (bitnet.cpp's size formula)")?;
            need(bk / 3 * 381 <= i16::MAX as usize, "BK ≤ 258")
        }
        other => Err(format!("{} has no tiles", other.name())),
    }
}

/// The tiles for a shape: bitnet.cpp's preset when it has one, else bm = 32, BK = 64 (TL1, or
/// the largest of 128/32/16/8 dividing K) or 96 (TL2), and the largest BM of 256, 320, 160,
/// 128, 64, 32 dividing M. None when no valid choice exists (the converter then falls back).
pub fn choose(layout: Layout, m: usize, k: usize) -> Option<Tiles> {
    if let Some(&(_, _, _, [r, c, s])) = PRESETS.iter().find(|p| p.0 == layout && p.1 == m && p.2 == k) {
        return Some(Tiles { rows: r, cols: c, sub_rows: s });
    }
    let bks: &[usize] = match layout {
        Layout::TL1 => &[64, 128, 32, 16, 8],
        Layout::TL2 => &[96, 192, 48, 24],
        _ => return None,
    };
    for &bk in bks {
        for bm_big in [256, 320, 160, 128, 64, 32] {
            let t = Tiles { rows: bm_big, cols: bk, sub_rows: 32 };
            if check(layout, m, k, t).is_ok() {
                return Some(t);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_fallbacks() {
        assert_eq!(choose(Layout::TL1, 3200, 3200), Some(Tiles { rows: 320, cols: 128, sub_rows: 64 }));
        assert_eq!(choose(Layout::TL2, 1536, 1536), Some(Tiles { rows: 128, cols: 192, sub_rows: 32 }));
        // 2B-4T shapes have no preset: the rule picks valid tiles.
        for (m, k) in [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)] {
            for layout in [Layout::TL1, Layout::TL2] {
                let t = choose(layout, m, k).unwrap();
                assert!(check(layout, m, k, t).is_ok(), "{m}x{k}");
            }
        }
        assert_eq!(choose(Layout::TL2, 64, 128), None, "K < 256 cannot be TL2");
        assert_eq!(choose(Layout::TL1, 48, 128), None, "M must be a multiple of 32");
        assert!(check(Layout::TL2, 256, 320, Tiles { rows: 128, cols: 96, sub_rows: 32 }).is_ok());
        assert!(check(Layout::TL2, 256, 300, Tiles { rows: 128, cols: 96, sub_rows: 32 }).is_err());
    }
}
