//! NumPy `.npy` files, format version 1.0, little-endian f32 only: what `tern logits` writes and
//! scripts read with `numpy.load`. The header is a Python dict literal padded with spaces and a
//! newline so the data starts at a multiple of 64 bytes.

use std::io::{self, Write};

const MAGIC: &[u8] = b"\x93NUMPY";

pub fn write_f32(out: &mut impl Write, shape: &[usize], data: &[f32]) -> io::Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "shape does not match data");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    out.write_all(MAGIC)?;
    out.write_all(&[1, 0])?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for v in data {
        out.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

/// Reads a v1.0 little-endian f32 C-order file as written by [`write_f32`] (or numpy).
pub fn read_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file".into());
    }
    if bytes[6] != 1 {
        return Err(format!(".npy version {}.{} is not supported", bytes[6], bytes[7]));
    }
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes.get(10..10 + len).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(format!("only little-endian f32 C-order arrays are supported: {header}"));
    }
    let shape_text = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or("no shape")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad dimension {s:?}")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[10 + len..];
    let n: usize = shape.iter().product();
    if data.len() != n * 4 {
        return Err(format!("shape {shape:?} needs {} data bytes, found {}", n * 4, data.len()));
    }
    Ok((shape, data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_round_trips() {
        let mut out = Vec::new();
        write_f32(&mut out, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]).unwrap();
        let hlen = u16::from_le_bytes([out[8], out[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert!(
            std::str::from_utf8(&out[10..10 + hlen])
                .unwrap()
                .starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }")
        );
        assert_eq!(read_f32(&out).unwrap(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]));
        let mut one = Vec::new();
        write_f32(&mut one, &[1], &[7.0]).unwrap();
        assert!(String::from_utf8_lossy(&one).contains("'shape': (1,)"));
    }
}
