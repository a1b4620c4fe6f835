//! The properties the fuzz targets check, shared with the regression tests that replay every
//! crash the fuzzer found (`formats/tests/fuzz_regressions.rs`), so a replay checks exactly what
//! the fuzzer did.

use tern_formats::Layout;
use tern_formats::tiles::{Tiles, check};

const LAYOUTS: [Layout; 5] = [Layout::I2S, Layout::TL1, Layout::TL2, Layout::TQ1_0, Layout::TQ2_0];

/// Arbitrary bytes as a packed ternary tensor of every layout: the first 7 bytes choose the
/// layout, the shape and the tiles (used only when `tiles::check` accepts them, as the loader
/// does); the rest is the tensor data — repeated to the layout's exact size, so every input
/// exercises the decoders, unless the header asks for it as is (short inputs). Unpacking must
/// return Ok (codes in {-1, 0, 1}, the right count) or Err, never panic.
pub fn unpack_case(data: &[u8]) {
    let Some((head, bytes)) = data.split_first_chunk::<7>() else { return };
    if bytes.is_empty() {
        return;
    }
    let layout = LAYOUTS[head[0] as usize % LAYOUTS.len()];
    let k = 1 + u16::from_le_bytes([head[3], head[4]]) as usize % 512;
    let (m, tiles) = match layout {
        Layout::TL1 | Layout::TL2 => {
            let m = 32 * (1 + head[1] as usize % 2);
            let t = Tiles {
                rows: 32 * (1 + head[2] as usize % 2),
                cols: 8 * (1 + head[6] as usize % 32),
                sub_rows: if head[2] & 0x80 == 0 { 32 } else { 64 },
            };
            if check(layout, m, k, t).is_err() {
                return;
            }
            (m, Some(t))
        }
        _ => (1 + head[1] as usize % 16, None),
    };
    let Ok(size) = layout.tensor_type().byte_size(&[k as u64, m as u64]) else { return };
    let tensor: Vec<u8> = if head[5] & 1 == 1 {
        bytes.to_vec()
    } else {
        bytes.iter().copied().cycle().take(size as usize).collect()
    };
    if let Ok((codes, _scale)) = layout.unpack(&tensor, m, k, tiles) {
        assert_eq!(codes.len(), m * k);
        assert!(codes.iter().all(|&c| (-1..=1).contains(&c)));
    }
}
