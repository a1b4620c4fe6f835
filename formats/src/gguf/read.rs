//! GGUF reading, paranoid in the style of the safetensors crate: every count, length and offset
//! is checked against what the file can hold before anything is allocated or sliced, so a
//! hostile file gives an error naming the field, never a panic, a huge allocation or an
//! out-of-bounds read. Parsing works on a byte slice (an mmap in practice, arbitrary bytes in the
//! fuzzer); [`GgufFile`] adds the file and its path.

use super::value::{Array, Metadata, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::error::{FormatError, Result};
use crate::tensor_type::{TensorType, known_type_names};
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// GGML's limit on tensor rank.
const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are refused (no real file nests at all).
const MAX_ARRAY_DEPTH: u32 = 3;
/// Metadata array elements in one file. Each costs ~32 bytes in memory however small on disk,
/// so this bounds memory at ~0.5 GB; real files hold well under 1 M (vocab + merges).
const MAX_ARRAY_ELEMENTS: u64 = 16 << 20;
/// Initial reservations never exceed this; vectors grow as elements actually parse.
const MAX_RESERVE: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF dims, innermost (contiguous) first: a PyTorch `[out, in]` matrix is `[in, out]`.
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// (rows, cols) of a matrix seen as PyTorch `[out, in]`: cols = dims[0], rows = the rest.
    pub fn rows_cols(&self) -> (u64, u64) {
        let cols = self.dims.first().copied().unwrap_or(1);
        (self.elements() / cols.max(1), cols)
    }
}

#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset where the data section starts.
    pub data_offset: u64,
}

impl GgufHeader {
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Array elements parsed so far (bounded by MAX_ARRAY_ELEMENTS).
    elements: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            ));
        }
        let n = n as usize;
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        self.str(what).map(Cow::into_owned)
    }

    /// A string borrowed from the file when it is valid UTF-8 (invalid bytes become U+FFFD).
    fn str(&mut self, what: &str) -> Result<Cow<'a, str>, String> {
        let len = self.u64(what)?;
        let s = self.take(len, what)?;
        Ok(String::from_utf8_lossy(s))
    }

    /// Keys and tensor names must be real UTF-8: they are looked up by name.
    fn strict_string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        let s = self.take(len, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn value(&mut self, ty: ValueType, what: &str, depth: u32) -> Result<Value, String> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: bool byte is {b}, not 0 or 1")),
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem_id = self.u32(what)?;
                let elem = ValueType::from_id(elem_id)
                    .ok_or_else(|| format!("{what}: unknown array element type {elem_id}"))?;
                let count = self.u64(what)?;
                // Bound the allocation by what the rest of the file could possibly hold.
                if count > self.remaining() / elem.min_size() {
                    return Err(format!(
                        "{what}: array claims {count} {} elements, the file has room for at most {}",
                        elem.name(),
                        self.remaining() / elem.min_size()
                    ));
                }
                self.elements += count;
                if self.elements > MAX_ARRAY_ELEMENTS {
                    return Err(format!(
                        "{what}: more than {MAX_ARRAY_ELEMENTS} metadata array elements in one file"
                    ));
                }
                let mut items = Array::empty(elem);
                for _ in 0..count {
                    if elem == ValueType::String {
                        items.push_str(&self.str(what)?);
                    } else {
                        items.push(self.value(elem, what, depth + 1)?);
                    }
                }
                Value::Array(items)
            }
        })
    }
}

/// Parses a whole GGUF file held in memory (header, metadata, tensor infos; data is not read).
pub fn parse_header(bytes: &[u8]) -> Result<GgufHeader, String> {
    let mut c = Cursor { bytes, pos: 0, elements: 0 };
    let magic =
        c.take(4, "magic").map_err(|_| format!("file is too short to be GGUF ({} bytes)", bytes.len()))?;
    if magic != MAGIC {
        return Err(format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"));
    }
    let version = c.u32("version")?;
    if version == 1 {
        return Err("GGUF version 1 (2023) is not supported; re-convert the model".into());
    }
    if !(2..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version} (tern reads 2 and 3)"));
    }
    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata count")?;
    // A key-value pair takes at least 8 + 4 + 1 bytes, a tensor info at least 8 + 4 + 8 + 4 + 8.
    if kv_count > c.remaining() / 13 {
        return Err(format!("header claims {kv_count} metadata entries, more than the file can hold"));
    }
    if tensor_count > c.remaining() / 32 {
        return Err(format!("header claims {tensor_count} tensors, more than the file can hold"));
    }

    let mut metadata = Metadata::default();
    let mut keys = HashSet::new();
    for i in 0..kv_count {
        let key = c.strict_string(&format!("metadata key #{i}"))?;
        let type_id = c.u32(&format!("type of metadata '{key}'"))?;
        let ty = ValueType::from_id(type_id)
            .ok_or_else(|| format!("metadata '{key}' has unknown value type {type_id}"))?;
        let value = c.value(ty, &format!("metadata '{key}'"), 0)?;
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key '{key}' appears twice"));
        }
        metadata.0.push((key, value));
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(format!("general.alignment is {v}, not a power of two up to 2^20")),
        },
    };

    let mut tensors = Vec::with_capacity((tensor_count as usize).min(MAX_RESERVE));
    let mut names = HashSet::new();
    for i in 0..tensor_count {
        let name = c.strict_string(&format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&format!("rank of tensor '{name}'"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor '{name}' has rank {n_dims} (1 to {MAX_DIMS} allowed)"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let dim = c.u64(&format!("dimension {d} of tensor '{name}'"))?;
            if dim == 0 {
                return Err(format!("tensor '{name}' has a zero-size dimension {d}"));
            }
            dims.push(dim);
        }
        let type_id = c.u32(&format!("type of tensor '{name}'"))?;
        let ty = TensorType::from_id(type_id).ok_or_else(|| {
            format!(
                "tensor '{name}' has type id {type_id}, which tern does not know (known: {})",
                known_type_names()
            )
        })?;
        let offset = c.u64(&format!("offset of tensor '{name}'"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let size = ty.byte_size(&dims).map_err(|e| format!("tensor '{name}' ({ty}, dims {dims:?}): {e}"))?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor '{name}' appears twice"));
        }
        tensors.push(TensorInfo { name, dims, ty, offset, size });
    }

    let data_offset = (c.pos as u64).next_multiple_of(alignment);
    let file_len = bytes.len() as u64;
    for t in &mut tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len => t.offset = s,
            _ => {
                return Err(format!(
                    "truncated: tensor '{}' needs bytes up to {} but the file has {file_len}",
                    t.name,
                    data_offset as u128 + t.offset as u128 + t.size as u128
                ));
            }
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        // bitnet.cpp writes a TL weight's `<name>_scale` tensor where the weight's 32-byte scale
        // tail is: that one overlap is by design.
        let scale_in_tail = pair[1].name == format!("{}_scale", pair[0].name)
            && pair[1].offset + pair[1].size <= pair[0].offset + pair[0].size
            && pair[1].offset + 32 >= pair[0].offset + pair[0].size;
        if pair[0].offset + pair[0].size > pair[1].offset && !scale_in_tail {
            return Err(format!("tensors '{}' and '{}' overlap", pair[0].name, pair[1].name));
        }
    }
    Ok(GgufHeader { version, metadata, tensors, alignment, data_offset })
}

/// A GGUF file mapped into memory, with its header parsed and validated.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: GgufHeader,
    map: memmap2::Mmap,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| FormatError::io(&path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(&path, e))?.len();
        if len < 24 {
            return Err(FormatError::corrupt(&path, format!("file is too short to be GGUF ({len} bytes)")));
        }
        // SAFETY: the map is read-only and tern never writes to a file it reads. Another process
        // changing bytes cannot cause an out-of-bounds access (offsets were validated at parse
        // time); truncating the file while it is mapped would raise SIGBUS, as for any mmap.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(&path, e))?;
        // Ask for 2 MiB pages: pages read in through this map then come in 2 MiB folios where the
        // filesystem supports them, and streaming the weights through 2 MiB pages instead of
        // 4 KiB ones can be faster (fewer TLB misses, prefetchers not stopped every 4 KiB;
        // docs/performance-notes.md, "Page sizes"). Only advice: kernels without it change nothing.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let header = parse_header(&map).map_err(|msg| FormatError::corrupt(&path, msg))?;
        Ok(GgufFile { path, header, map })
    }

    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }

    /// The bytes of a tensor (bounds were checked when the header was parsed).
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.offset as usize..(info.offset + info.size) as usize]
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The whole mapped file (tensor infos give validated offsets into it).
    pub fn as_bytes(&self) -> &[u8] {
        &self.map
    }

    /// Drops the whole pages inside `offset..offset + len` from this process's resident memory,
    /// for bytes a reader has copied out and will not read again (a runtime's repacked weights).
    /// They are the file's pages, read in again if touched, so the map's contents never change.
    pub fn release(&self, offset: usize, len: usize) {
        const PAGE: usize = 4096;
        let base = self.map.as_ptr() as usize;
        let start = (base + offset).next_multiple_of(PAGE) - base;
        let end = ((base + offset + len) / PAGE * PAGE).saturating_sub(base);
        if end > start && end <= self.map.len() {
            // SAFETY: the map is private and read-only, so dropping its pages loses nothing:
            // the next read faults the same bytes in from the file. Only a hint; errors ignored.
            let _ = unsafe {
                self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}
