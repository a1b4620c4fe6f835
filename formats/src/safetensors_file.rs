//! One safetensors file, memory-mapped: the header is parsed and validated by the safetensors
//! crate (offsets tile the data exactly, dtype × shape = byte span, no overflow), and tern adds
//! errors that name the file and say what is wrong in words. Tensor data is never copied here.

use crate::error::{FormatError, Result};
use half::f16;
use rayon::prelude::*;
use safetensors::SafeTensors;
pub use safetensors::tensor::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct StTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl StTensor {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct SafetensorsFile {
    pub path: PathBuf,
    map: memmap2::Mmap,
    /// In file (offset) order.
    tensors: Vec<StTensor>,
    by_name: HashMap<String, usize>,
    pub user_metadata: Option<HashMap<String, String>>,
}

/// Words for the safetensors crate's errors, with the numbers that explain them.
fn explain(err: safetensors::SafeTensorError, bytes: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    let claimed = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0);
    match err {
        E::HeaderTooSmall => format!("file is too short to be safetensors ({} bytes)", bytes.len()),
        E::HeaderTooLarge => format!(
            "header length field says {claimed} bytes (limit 100 MB): not a safetensors file, or corrupt"
        ),
        E::InvalidHeaderLength => format!(
            "header length field says {claimed} bytes but the file has only {} after it: truncated or corrupt",
            bytes.len().saturating_sub(8)
        ),
        E::InvalidHeader(_) => "header is not valid UTF-8".into(),
        E::InvalidHeaderDeserialization(e) => format!("header is not valid safetensors JSON: {e}"),
        E::MetadataIncompleteBuffer => format!(
            "tensor data does not match the file size ({} bytes): truncated, or bytes appended",
            bytes.len()
        ),
        E::TensorInvalidInfo => "a tensor's byte range does not match its dtype and shape".into(),
        E::InvalidOffset(name) => format!("tensor '{name}' has invalid data offsets (gap or overlap)"),
        E::ValidationOverflow => "a tensor's shape overflows when multiplied out".into(),
        other => other.to_string(),
    }
}

/// A validated header of a whole safetensors file in memory: its tensors in file order (absolute
/// byte ranges) and the user metadata. Errors say what is wrong in words.
#[allow(clippy::type_complexity)]
pub fn parse_tensors(
    bytes: &[u8],
) -> std::result::Result<(Vec<StTensor>, Option<HashMap<String, String>>), String> {
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| explain(e, bytes))?;
    let data_start = 8 + header_len;
    let mut tensors: Vec<StTensor> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| StTensor {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            start: data_start + info.data_offsets.0,
            end: data_start + info.data_offsets.1,
        })
        .collect();
    tensors.sort_by_key(|t| (t.start, t.end));
    Ok((tensors, metadata.metadata().clone()))
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| FormatError::io(&path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(&path, e))?.len();
        if len < 8 {
            return Err(FormatError::corrupt(
                &path,
                format!("file is too short to be safetensors ({len} bytes)"),
            ));
        }
        // SAFETY: read-only map; tern never writes to its inputs.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(&path, e))?;
        let (tensors, user_metadata) = parse_tensors(&map).map_err(|e| FormatError::corrupt(&path, e))?;
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafetensorsFile { path, map, tensors, by_name, user_metadata })
    }

    pub fn tensors(&self) -> &[StTensor] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&StTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn data(&self, t: &StTensor) -> &[u8] {
        &self.map[t.start..t.end]
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// A tensor as f32 (from BF16, F16 or F32), refusing NaN and ±Inf: a master weight or norm
    /// that is not finite would silently poison every output.
    pub fn to_f32(&self, t: &StTensor) -> Result<Vec<f32>> {
        let mut values = Vec::new();
        self.to_f32_into(t, &mut values)?;
        Ok(values)
    }

    /// [`to_f32`](Self::to_f32) into a reused buffer (its old contents replaced): converting
    /// tensor after tensor then costs no fresh allocation — and no page faults — per tensor. The
    /// values are decoded straight into the buffer, a piece at a time, each piece's pages let go
    /// after as in [`for_each_f32_chunk`](Self::for_each_f32_chunk).
    pub fn to_f32_into(&self, t: &StTensor, values: &mut Vec<f32>) -> Result<()> {
        let width = self.float_width(t)?;
        let n = t.elements();
        // Zero-filled only past the buffer's current length: a reused buffer is not cleared first.
        if values.len() < n {
            values.resize(n, 0.0);
        }
        values.truncate(n);
        let piece = 1 << 20;
        for (i, out) in values.chunks_mut(piece).enumerate() {
            let first = i * piece;
            self.decode_finite_into(
                t,
                &self.data(t)[first * width..(first + out.len()) * width],
                first,
                out,
            )?;
            #[cfg(unix)]
            self.release_pages(t.start + first * width, t.start + (first + out.len()) * width, false);
        }
        Ok(())
    }

    /// Decodes a float tensor (BF16, F16, F32) to f32 `chunk` elements at a time and hands each
    /// piece to `f`, so a tensor never needs to exist whole as f32 (a 2.6 GB embedding becomes
    /// pieces of a few MB), nor resident: each piece's pages are let go once `f` has it (see
    /// [`release`](Self::release)). Every value must be finite.
    pub fn for_each_f32_chunk(
        &self,
        t: &StTensor,
        chunk: usize,
        mut f: impl FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        let width = self.float_width(t)?;
        let mut done = 0;
        for bytes in self.data(t).chunks(chunk.saturating_mul(width).max(width)) {
            let values = self.decode_finite(t, bytes, done)?;
            done += values.len();
            f(&values)?;
            // Whole pages only: the page this piece ends in holds the next piece's start.
            #[cfg(unix)]
            self.release_pages(t.start + (done - values.len()) * width, t.start + done * width, false);
        }
        Ok(())
    }

    /// Elements `range` of a float tensor (BF16, F16, F32) as f32 — e.g. a few rows of a large
    /// embedding — refusing NaN and ±Inf like [`to_f32`](Self::to_f32).
    pub fn range_to_f32(&self, t: &StTensor, range: std::ops::Range<usize>) -> Result<Vec<f32>> {
        if range.start > range.end || range.end > t.elements() {
            return Err(FormatError::tensor(
                &self.path,
                &t.name,
                format!("elements {range:?} are outside the tensor's {}", t.elements()),
            ));
        }
        let width = self.float_width(t)?;
        self.decode_finite(t, &self.data(t)[range.start * width..range.end * width], range.start)
    }

    /// Bytes per element of a float tensor; an error for any other dtype.
    fn float_width(&self, t: &StTensor) -> Result<usize> {
        match t.dtype {
            Dtype::F32 => Ok(4),
            Dtype::BF16 | Dtype::F16 => Ok(2),
            other => Err(FormatError::tensor(
                &self.path,
                &t.name,
                format!("dtype {other:?} where a float tensor (BF16, F16 or F32) was expected"),
            )),
        }
    }

    /// `bytes` of `t` (whose first element is element `first` of the tensor) as f32, every value
    /// finite.
    fn decode_finite(&self, t: &StTensor, bytes: &[u8], first: usize) -> Result<Vec<f32>> {
        let mut values = vec![0f32; bytes.len() / self.float_width(t)?];
        self.decode_finite_into(t, bytes, first, &mut values)?;
        Ok(values)
    }

    /// Decodes `bytes` (elements `first..` of float tensor `t`) into `out`, on every thread,
    /// refusing the first value that is not finite.
    fn decode_finite_into(&self, t: &StTensor, bytes: &[u8], first: usize, out: &mut [f32]) -> Result<()> {
        debug_assert_eq!(bytes.len(), out.len() * self.float_width(t)?);
        let bad = match t.dtype {
            Dtype::F32 => decode_spans::<4>(bytes, out, f32::from_le_bytes),
            // A bf16 is the top half of an f32: a shift, exactly `bf16::to_f32` for every value
            // but a NaN's payload (refused below either way), and one the compiler vectorises.
            Dtype::BF16 => {
                decode_spans::<2>(bytes, out, |b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16))
            }
            _ => decode_spans::<2>(bytes, out, |b| f16::from_le_bytes(b).to_f32()),
        };
        match bad {
            Some((i, v)) => Err(FormatError::tensor(
                &self.path,
                &t.name,
                format!("value #{} is {} (weights must be finite)", first + i, v),
            )),
            None => Ok(()),
        }
    }

    #[cfg(unix)]
    /// Tells the kernel this tensor's pages will not be read again soon, so they leave this
    /// process's resident set (the file stays in the page cache; a later read maps it back in).
    /// Conversion streams tensor by tensor, so without this a whole checkpoint would count as
    /// resident by the end.
    pub fn release(&self, t: &StTensor) {
        self.release_pages(t.start, t.end, true);
    }

    /// Drops the pages of bytes `start..end` of the map from the resident set: every page they
    /// touch when `partial_end`, else the pages up to the one `end` falls in.
    #[cfg(unix)]
    fn release_pages(&self, start: usize, end: usize, partial_end: bool) {
        const PAGE: usize = 4096;
        let start = start / PAGE * PAGE;
        let end =
            if partial_end { end.next_multiple_of(PAGE) } else { end / PAGE * PAGE }.min(self.map.len());
        if end > start {
            // SAFETY: a read-only, file-backed shared mapping: MADV_DONTNEED only drops pages,
            // which are re-read from the file on the next access; no data can change or be lost.
            let _ = unsafe {
                self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// Decodes `W`-byte little-endian values from `bytes` into `out` with `decode`, spans of them per
/// task on every thread (one task per value would cost more than the decoding), and returns the
/// first value that is not finite, with its index.
fn decode_spans<const W: usize>(
    bytes: &[u8],
    out: &mut [f32],
    decode: impl Fn([u8; W]) -> f32 + Sync,
) -> Option<(usize, f32)> {
    const SPAN: usize = 1 << 14;
    out.par_chunks_mut(SPAN).zip(bytes.par_chunks(SPAN * W)).enumerate().find_map_first(|(i, (o, b))| {
        for (v, b) in o.iter_mut().zip(b.chunks_exact(W)) {
            *v = decode(std::array::from_fn(|k| b[k]));
        }
        o.iter().position(|v| !v.is_finite()).map(|j| (i * SPAN + j, o[j]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// A bf16 tensor `name` of `values` in a fresh file under the system temp directory.
    fn bf16_file(tag: &str, values: &[f32]) -> (PathBuf, SafetensorsFile) {
        bf16_bits_file(tag, &values.iter().map(|&v| bf16::from_f32(v).to_bits()).collect::<Vec<_>>())
    }

    /// A bf16 tensor `w` holding the bit patterns `bits`.
    fn bf16_bits_file(tag: &str, bits: &[u16]) -> (PathBuf, SafetensorsFile) {
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::BF16, vec![bits.len()], &bytes).unwrap();
        let path = std::env::temp_dir().join(format!("tern-st-{tag}-{}.safetensors", std::process::id()));
        safetensors::serialize_to_file([("w", view)], None, &path).unwrap();
        let file = SafetensorsFile::open(&path).unwrap();
        (path, file)
    }

    /// Decoding in pieces on every thread, into a reused buffer longer than the tensor, gives each
    /// value's own conversion; the first non-finite value is the one named, even pieces later.
    #[test]
    fn pieces_decode_exactly_and_name_the_first_bad_value() {
        let n = 3 * (1 << 20) + 5;
        let values: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) / 64.0).collect();
        let (path, file) = bf16_file("ok", &values);
        let t = file.get("w").unwrap().clone();
        let mut buffer = vec![7.0f32; n + 100];
        file.to_f32_into(&t, &mut buffer).unwrap();
        assert_eq!(buffer.len(), n);
        assert!(
            buffer
                .iter()
                .zip(&values)
                .all(|(got, want)| got.to_bits() == bf16::from_f32(*want).to_f32().to_bits())
        );
        std::fs::remove_file(path).unwrap();

        let mut bad = values.clone();
        let first = (1 << 20) + 20_000;
        bad[first] = f32::NAN;
        bad[first + 3] = f32::INFINITY;
        bad[n - 1] = f32::NAN;
        let (path, file) = bf16_file("bad", &bad);
        let t = file.get("w").unwrap().clone();
        let err = file.to_f32_into(&t, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains(&format!("value #{first} is NaN")), "{err}");
        let err = file.to_f32(&t).unwrap_err().to_string();
        assert!(err.contains(&format!("value #{first} is NaN")), "{err}");
        let mut pieces = 0;
        let err = file
            .for_each_f32_chunk(&t, 1 << 20, |_| {
                pieces += 1;
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("value #{first} is NaN")) && pieces == 1, "{err}");
        std::fs::remove_file(path).unwrap();
    }

    /// Every finite bf16 bit pattern decodes to the f32 `half` gives it, bit for bit.
    #[test]
    fn every_finite_bf16_decodes_as_half_does() {
        let bits: Vec<u16> = (0..=u16::MAX).filter(|&b| bf16::from_bits(b).is_finite()).collect();
        let (path, file) = bf16_bits_file("all", &bits);
        let t = file.get("w").unwrap().clone();
        let got = file.to_f32(&t).unwrap();
        std::fs::remove_file(path).unwrap();
        assert_eq!(got.len(), 65536 - 2 * 128);
        for (b, v) in bits.iter().zip(&got) {
            assert_eq!(v.to_bits(), bf16::from_bits(*b).to_f32().to_bits(), "bf16 {b:#06x}");
        }
    }
}
