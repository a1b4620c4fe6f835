//! Streaming GGUF v3 writer: the header (with every offset) is computed from tensor shapes and
//! the type table before any data exists, then tensors are written one at a time in order, so a
//! converter holds one tensor in memory, never the model.

use super::value::{Metadata, Value};
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::tensor_type::TensorType;
use std::io::{self, Write};

#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub ty: TensorType,
    /// GGUF dims, innermost first.
    pub dims: Vec<u64>,
}

pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<(TensorSpec, u64)>,
    next: usize,
    alignment: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => write_string(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(a) => {
            let ty = a.elem_type();
            w.write_all(&(ty as u32).to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            for item in a.iter() {
                if item.value_type() != ty {
                    return Err(invalid(format!(
                        "array of {} holds a {}",
                        ty.name(),
                        item.value_type().name()
                    )));
                }
                write_value(w, &item)?;
            }
            Ok(())
        }
    }
}

fn pad(w: &mut impl Write, written: u64, alignment: u64) -> io::Result<()> {
    let n = written.next_multiple_of(alignment) - written;
    w.write_all(&vec![0u8; n as usize])
}

/// Counts bytes so the header's padding can be computed while it streams out.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header for `tensors` (in this order) and returns a writer expecting their data.
    pub fn new(mut out: W, metadata: &Metadata, tensors: Vec<TensorSpec>) -> io::Result<Self> {
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| invalid(format!("general.alignment {v} is not a power of two")))?,
        };
        let mut sized = Vec::with_capacity(tensors.len());
        for spec in tensors {
            let size =
                spec.ty.byte_size(&spec.dims).map_err(|e| invalid(format!("tensor '{}': {e}", spec.name)))?;
            sized.push((spec, size));
        }
        let mut w = Counting { inner: &mut out, count: 0 };
        w.write_all(MAGIC)?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(sized.len() as u64).to_le_bytes())?;
        w.write_all(&(metadata.len() as u64).to_le_bytes())?;
        for (key, value) in metadata.iter() {
            write_string(&mut w, key)?;
            w.write_all(&(value.value_type() as u32).to_le_bytes())?;
            write_value(&mut w, value)?;
        }
        let mut offset = 0u64;
        for (spec, size) in &sized {
            write_string(&mut w, &spec.name)?;
            w.write_all(&(spec.dims.len() as u32).to_le_bytes())?;
            for d in &spec.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&spec.ty.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset += size.next_multiple_of(alignment);
        }
        let count = w.count;
        pad(&mut out, count, alignment)?;
        Ok(GgufWriter { out, tensors: sized, next: 0, alignment })
    }

    /// The tensor whose data must come next, if any.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next).map(|(s, _)| s)
    }

    /// Writes the data of the next tensor; its name and byte size must match the header.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.write_tensor_parts(name, |sink| sink(data))
    }

    /// Writes the next declared tensor in pieces: `fill` calls `sink` with consecutive parts
    /// whose lengths must add up to the declared size (so a large tensor never sits whole in RAM).
    pub fn write_tensor_parts(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some((spec, size)) = self.tensors.get(self.next) else {
            return Err(invalid(format!("tensor '{name}' written after the last declared tensor")));
        };
        if spec.name != name {
            return Err(invalid(format!("tensor '{name}' written where '{}' was declared", spec.name)));
        }
        let size = *size;
        let mut written = 0u64;
        let out = &mut self.out;
        fill(&mut |part: &[u8]| {
            written += part.len() as u64;
            if written > size {
                return Err(invalid(format!(
                    "tensor '{name}' has more bytes than its header entry's {size}"
                )));
            }
            out.write_all(part)
        })?;
        if written != size {
            return Err(invalid(format!(
                "tensor '{name}' has {written} bytes, its header entry says {size}"
            )));
        }
        pad(&mut self.out, size, self.alignment)?;
        self.next += 1;
        Ok(())
    }
    /// Checks every declared tensor was written and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        if let Some((spec, _)) = self.tensors.get(self.next) {
            return Err(invalid(format!("tensor '{}' was declared but never written", spec.name)));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Array, ValueType, parse_header};
    use super::*;

    #[test]
    fn round_trip_every_value_type_and_tensor() {
        let mut md = Metadata::default();
        md.set("general.architecture", Value::String("bitnet-b1.58".into()));
        md.set("u8", Value::U8(7));
        md.set("i8", Value::I8(-7));
        md.set("u16", Value::U16(65535));
        md.set("i16", Value::I16(-300));
        md.set("u32", Value::U32(1 << 31));
        md.set("i32", Value::I32(-5));
        md.set("f32", Value::F32(0.1));
        md.set("bool", Value::Bool(true));
        md.set("u64", Value::U64(u64::MAX));
        md.set("i64", Value::I64(i64::MIN));
        md.set("f64", Value::F64(-2.5e300));
        md.set("tokens", Value::string_array(["a".to_string(), "é".to_string(), String::new()]));
        md.set("empty", Value::Array(Array::empty(ValueType::I32)));
        md.set(
            "nested",
            Value::Array(Array::from_values(
                ValueType::Array,
                vec![Value::i32_array([1, 2]), Value::i32_array([])],
            )),
        );
        let specs = vec![
            TensorSpec { name: "a".into(), ty: TensorType::F32, dims: vec![3] },
            TensorSpec { name: "b".into(), ty: TensorType::I2S, dims: vec![128, 2] },
        ];
        let a: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b = vec![0x55u8; 2 * 32 + 32];
        let mut w = GgufWriter::new(Vec::new(), &md, specs).unwrap();
        w.write_tensor("a", &a).unwrap();
        assert!(w.write_tensor("a", &a).is_err()); // out of order
        w.write_tensor("b", &b).unwrap();
        let bytes = w.finish().unwrap();

        let h = parse_header(&bytes).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.metadata, md);
        assert_eq!(h.tensors.len(), 2);
        let ta = &h.tensors[0];
        assert_eq!(ta.offset % 32, 0);
        assert_eq!(&bytes[ta.offset as usize..][..12], &a[..]);
        let tb = &h.tensors[1];
        assert_eq!((tb.ty, tb.dims.clone(), tb.size), (TensorType::I2S, vec![128, 2], 96));
        assert_eq!(&bytes[tb.offset as usize..][..96], &b[..]);
    }

    #[test]
    fn writer_refuses_missing_and_wrong_sized_tensors() {
        let specs = vec![TensorSpec { name: "a".into(), ty: TensorType::F16, dims: vec![4] }];
        let mut w = GgufWriter::new(Vec::new(), &Metadata::default(), specs.clone()).unwrap();
        assert!(w.write_tensor("a", &[0u8; 7]).is_err());
        let w = GgufWriter::new(Vec::new(), &Metadata::default(), specs.clone()).unwrap();
        assert!(w.finish().is_err());
        // In parts: too few bytes, too many, and the right number.
        let mut w = GgufWriter::new(Vec::new(), &Metadata::default(), specs.clone()).unwrap();
        assert!(w.write_tensor_parts("a", |sink| sink(&[1, 2, 3])).is_err());
        let mut w = GgufWriter::new(Vec::new(), &Metadata::default(), specs.clone()).unwrap();
        assert!(
            w.write_tensor_parts("a", |sink| {
                sink(&[1; 5])?;
                sink(&[2; 5])
            })
            .is_err()
        );
        let mut w = GgufWriter::new(Vec::new(), &Metadata::default(), specs.clone()).unwrap();
        w.write_tensor_parts("a", |sink| {
            sink(&[1, 2, 3])?;
            sink(&[])?;
            sink(&[4, 5, 6, 7, 8])
        })
        .unwrap();
        let parts = w.finish().unwrap();
        let mut w = GgufWriter::new(Vec::new(), &Metadata::default(), specs).unwrap();
        w.write_tensor("a", &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(parts, w.finish().unwrap(), "parts write the same bytes as one piece");
    }

    #[test]
    fn hostile_headers_are_errors() {
        let mut good = GgufWriter::new(
            Vec::new(),
            &Metadata::default(),
            vec![TensorSpec { name: "t".into(), ty: TensorType::F32, dims: vec![2, 2] }],
        )
        .unwrap();
        good.write_tensor("t", &[0u8; 16]).unwrap();
        let good = good.finish().unwrap();
        // Every truncation that loses real bytes (not just the final padding) is an error.
        let t = &parse_header(&good).unwrap().tensors[0];
        for cut in 0..(t.offset + t.size) as usize {
            assert!(parse_header(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A tensor count of 2^62.
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(parse_header(&huge).unwrap_err().contains("tensors"));
        // Unknown type id.
        let mut unknown = good.clone();
        let type_pos = 24 + 8 + 1 + 4 + 16;
        unknown[type_pos..type_pos + 4].copy_from_slice(&37u32.to_le_bytes());
        assert!(parse_header(&unknown).unwrap_err().contains("type id 37"));
        // Zero-size dimension.
        let mut zero = good.clone();
        zero[24 + 8 + 1 + 4..][..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(parse_header(&zero).unwrap_err().contains("zero-size"));
    }
}
