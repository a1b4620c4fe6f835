//! The weights of a GGUF model, validated once at load: every tensor the graph needs is present
//! with the expected type and dims (the GGUF reader already proved each byte range lies inside
//! the file), ternary scales are finite, and packed codes are never 3 — checked once here, so a
//! corrupt file fails at load instead of computing wrong numbers.
//! Weight bytes stay in the memory map and only norms (a few KB) are copied out, except where the
//! selected kernels read a matrix repacked (`trit_tiles::wanted`, `i2s_tiles::wanted`, a
//! Q4_0/Q8_0 head): then the file's pages of that matrix are released once its tiles are built.

use super::config::ModelConfig;
use crate::kernels::head::{self, HeadTiles};
use crate::kernels::i2s_rows;
use crate::kernels::i2s_tiles::{self, I2sTiles};
use crate::kernels::layouts::Packed;
use crate::kernels::trit_tiles::{self, TritTiles};
use crate::pages::{ArenaBytes, TileArena};
use crate::{Result, RuntimeError};
use std::path::Path;
use std::sync::Arc;
use tern_formats::gguf::Metadata;
use tern_formats::gguf::{GgufFile, TensorInfo};
use tern_formats::tiles::{self, Tiles};
use tern_formats::{Layout, TensorType, i2s, tl1, tl2, tq1_0, tq2_0};

/// The tiles `tern.tiles` records for an `m × k` matrix.
fn tern_tiles(md: &Metadata, m: usize, k: usize) -> Option<Tiles> {
    let table: Vec<usize> = md
        .get("tern.tiles")?
        .as_array()?
        .iter()
        .map(|x| x.as_u64().map(|n| n as usize))
        .collect::<Option<_>>()?;
    table.chunks_exact(5).find(|v| v[0] == m && v[1] == k).map(|v| Tiles {
        rows: v[2],
        cols: v[3],
        sub_rows: v[4],
    })
}

/// A packed ternary matrix `[rows = out, cols = in]` inside the mapped file, in any layout.
#[derive(Debug, Clone)]
pub struct TernaryMatrix {
    pub name: String,
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    pub tiles: Option<Tiles>,
    /// Byte offset and size of the tensor's data in the file.
    pub offset: usize,
    pub size: usize,
    /// β: W ≈ β · t.
    pub scale: f32,
    /// I2_S bytes packed at load (`layout` is then I2_S): for projections the file stores as
    /// floats (see `Loader::float_projection`), and for TL1, TL2, TQ1_0 and TQ2_0 matrices where
    /// the CPU runs I2_S faster (`i2s_rows::wanted`); None: the bytes are the file's, at `offset`.
    pub packed_at_load: Option<Arc<ArenaBytes>>,
    /// The weights repacked at load where the selected kernels read TL1, TL2 and TQ1_0 so
    /// (`trit_tiles::wanted`).
    pub trit_tiles: Option<Arc<TritTiles>>,
    /// The same weights as I2_S tiles, where the selected kernels read I2_S so
    /// (`i2s_tiles::wanted`).
    pub i2s_tiles: Option<Arc<I2sTiles>>,
}

impl TernaryMatrix {
    /// A matrix whose weights were packed at load into the I2_S tensor `bytes`; `offset` is
    /// where the file stores it.
    fn packed_at_load(
        name: &str,
        rows: usize,
        cols: usize,
        offset: usize,
        scale: f32,
        bytes: ArenaBytes,
    ) -> Self {
        TernaryMatrix {
            name: name.to_string(),
            layout: Layout::I2S,
            rows,
            cols,
            tiles: None,
            offset,
            size: bytes.as_slice().len(),
            scale,
            packed_at_load: Some(Arc::new(bytes)),
            trit_tiles: None,
            i2s_tiles: None,
        }
    }

    /// Activations per row the kernels read (I2_S pads rows to whole 128-weight blocks).
    pub fn padded_cols(&self) -> usize {
        match self.layout {
            Layout::I2S => i2s::row_bytes(self.cols) * 4,
            _ => self.cols,
        }
    }
}

/// A float matrix (embeddings, lm_head) `[rows, cols]`: F16 or F32, or a block-quantised type
/// other tools write (Q8_0, Q6_K, BF16; decoded row by row, `tern_formats::float_blocks`).
#[derive(Debug, Clone)]
pub struct FloatMatrix {
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
    row_bytes: usize,
}

impl FloatMatrix {
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub attn_sub_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn_sub_norm: Option<Vec<f32>>,
    pub q: TernaryMatrix,
    pub k: TernaryMatrix,
    pub v: TernaryMatrix,
    pub o: TernaryMatrix,
    pub gate: TernaryMatrix,
    pub up: TernaryMatrix,
    pub down: TernaryMatrix,
}

pub struct Model {
    pub file: GgufFile,
    pub config: ModelConfig,
    pub embed: FloatMatrix,
    /// The lm_head: `output.weight`, or the embedding when tied.
    pub output: FloatMatrix,
    /// A Q4_0 or Q8_0 lm_head repacked for the integer head kernels (`kernels::head`).
    pub output_tiles: Option<HeadTiles>,
    pub tied: bool,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
}

impl Model {
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file)?;
        let c = &config;
        // Tiles the kernels read (I2_S tiles, trit tiles) share one arena in call order, reserved
        // for the larger of the two forms of every matrix.
        let isa = crate::cpu::selected();
        let repacks =
            [Layout::I2S, Layout::TQ2_0, Layout::TL1, Layout::TL2, Layout::TQ1_0].into_iter().any(|layout| {
                i2s_tiles::wanted(isa, layout)
                    || trit_tiles::wanted(isa, layout)
                    || i2s_rows::wanted(isa, layout)
            });
        let arena = if repacks {
            let (q_dim, kv_dim) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
            let shapes = [(q_dim, c.hidden), (kv_dim, c.hidden), (kv_dim, c.hidden), (c.hidden, q_dim)];
            let ffn = [(c.intermediate, c.hidden), (c.intermediate, c.hidden), (c.hidden, c.intermediate)];
            let layer: usize = shapes
                .iter()
                .chain(&ffn)
                .map(|&(r, k)| i2s_tiles::tiles_bytes(r, k).max(trit_tiles::tiles_bytes(r, k)) + 64)
                .sum();
            // Where the memory cannot be reserved, each matrix's tiles get their own.
            TileArena::new(layer.saturating_mul(c.layers)).ok()
        } else {
            None
        };
        let l = Loader { file: &file, arena };
        let embed = l.float("token_embd.weight", c.vocab, c.hidden)?;
        let (output, tied) = match file.tensor("output.weight") {
            Some(_) => (l.float("output.weight", c.vocab, c.hidden)?, false),
            None => (embed.clone(), true),
        };
        let q_dim = c.heads * c.head_dim;
        let kv_dim = c.kv_heads * c.head_dim;
        // Every layer needs at least its seven projections: never reserve more than the file has.
        let mut layers = Vec::with_capacity(c.layers.min(file.tensors().len() / 7));
        for i in 0..c.layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let optional = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
                match file.tensor(&n(s)) {
                    Some(_) => l.norm(&n(s), len).map(Some),
                    None => Ok(None),
                }
            };
            layers.push(Layer {
                attn_norm: l.norm(&n("attn_norm"), c.hidden)?,
                attn_sub_norm: optional("attn_sub_norm", q_dim)?,
                ffn_norm: l.norm(&n("ffn_norm"), c.hidden)?,
                ffn_sub_norm: optional("ffn_sub_norm", c.intermediate)?,
                q: l.ternary(&n("attn_q"), q_dim, c.hidden)?,
                k: l.ternary(&n("attn_k"), kv_dim, c.hidden)?,
                v: l.ternary(&n("attn_v"), kv_dim, c.hidden)?,
                o: l.ternary(&n("attn_output"), c.hidden, q_dim)?,
                gate: l.ternary(&n("ffn_gate"), c.intermediate, c.hidden)?,
                up: l.ternary(&n("ffn_up"), c.intermediate, c.hidden)?,
                down: l.ternary(&n("ffn_down"), c.hidden, c.intermediate)?,
            });
        }
        let output_norm = l.norm("output_norm.weight", c.hidden)?;
        let output_tiles = l.head_tiles(&output, tied)?;
        // The loader has just read every ternary byte, so the map's pages are what the run will
        // stream through: the AVX2 GEMV's prefetch pays only through 2 MiB pages.
        // `TERN_WEIGHT_PREFETCH=on|off` overrides the choice (to measure either way).
        let choice = match std::env::var("TERN_WEIGHT_PREFETCH").as_deref() {
            Ok("on") => Some(true),
            Ok("off") => Some(false),
            _ => crate::pages::mapped_file_pages(&file.path)
                .map(|(resident, huge)| resident == 0 || 2 * huge >= resident),
        };
        if let Some(on) = choice {
            crate::kernels::i2s::set_weight_prefetch(on);
        }
        Ok(Model { embed, output, output_tiles, tied, output_norm, layers, config, file })
    }

    /// Bytes of the file at a matrix's offset.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        &self.file.as_bytes()[offset..offset + len]
    }

    /// A matrix's bytes with what the kernels need to read them.
    pub fn packed<'a>(&'a self, m: &'a TernaryMatrix) -> Packed<'a> {
        let bytes = match &m.packed_at_load {
            Some(b) => b.as_slice(),
            None => self.bytes(m.offset, m.size),
        };
        Packed {
            trit_tiles: m.trit_tiles.as_deref(),
            i2s_tiles: m.i2s_tiles.as_deref(),
            ..Packed::new(m.layout, m.rows, m.cols, m.tiles, bytes)
        }
    }

    pub fn float_row(&self, m: &FloatMatrix, row: usize) -> &[u8] {
        self.float_rows(m, row, 1)
    }

    /// Rows `first..first + count` of `m`, consecutive in the map.
    pub fn float_rows(&self, m: &FloatMatrix, first: usize, count: usize) -> &[u8] {
        self.bytes(m.offset + first * m.row_bytes(), count * m.row_bytes())
    }

    /// Weight bytes read per generated token (for benchmarks): every ternary matrix and the
    /// output head once.
    pub fn bytes_per_token(&self) -> u64 {
        self.ternary_bytes() + self.head_bytes()
    }

    /// Bytes of the ternary matrices of every layer, as the kernels read them: the trit tiles'
    /// where the loader repacked a matrix (TL1's are a sixth smaller than its file bytes).
    pub fn ternary_bytes(&self) -> u64 {
        self.layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .map(|m| match (&m.trit_tiles, &m.i2s_tiles) {
                (Some(t), _) => t.bytes().len() as u64,
                (_, Some(t)) => t.bytes().len() as u64,
                _ => m.size as u64,
            })
            .sum()
    }

    /// Bytes of the output head, as the kernels read them (its tiles where repacked).
    pub fn head_bytes(&self) -> u64 {
        match &self.output_tiles {
            Some(t) => t.bytes().len() as u64,
            None => (self.output.rows * self.output.row_bytes()) as u64,
        }
    }
}

struct Loader<'a> {
    file: &'a GgufFile,
    /// Where repacked tiles go, when the kernels read tiles.
    arena: Option<TileArena>,
}

impl Loader<'_> {
    fn err(&self, name: &str, msg: String) -> RuntimeError {
        RuntimeError::Format(tern_formats::FormatError::tensor(&self.file.path, name, msg))
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.file.tensor(name).ok_or_else(|| self.err(name, "missing from the model".into()))
    }

    fn expect_dims(&self, t: &TensorInfo, dims: &[u64]) -> Result<()> {
        if t.dims != dims {
            return Err(self.err(&t.name, format!("dims {:?}, the metadata implies {dims:?}", t.dims)));
        }
        Ok(())
    }

    fn norm(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.info(name)?;
        if t.ty != TensorType::F32 {
            return Err(self.err(name, format!("type {}, norms must be F32", t.ty)));
        }
        self.expect_dims(t, &[len as u64])?;
        let v: Vec<f32> =
            self.file.data(t).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.err(name, format!("value #{i} is {}", v[i])));
        }
        Ok(v)
    }

    fn float(&self, name: &str, rows: usize, cols: usize) -> Result<FloatMatrix> {
        let t = self.info(name)?;
        if !tern_formats::float_blocks::is_supported(t.ty) {
            return Err(self.err(
                name,
                format!("type {} is not supported here (F32, F16, BF16, Q8_0, Q4_0 or Q6_K)", t.ty),
            ));
        }
        self.expect_dims(t, &[cols as u64, rows as u64])?;
        let row_bytes = t.ty.byte_size(&[cols as u64]).map_err(|m| self.err(name, m))? as usize;
        Ok(FloatMatrix { ty: t.ty, rows, cols, offset: t.offset as usize, row_bytes })
    }

    /// The integer head kernels' tiles of a Q4_0 or Q8_0 head (`None` for other types). Unless
    /// the head is the embedding too, whose rows are read from the file, the file's copy need
    /// not stay resident afterwards.
    fn head_tiles(&self, m: &FloatMatrix, tied: bool) -> Result<Option<HeadTiles>> {
        if head::block_bytes(m.ty).is_none() {
            return Ok(None);
        }
        let name = if tied { "token_embd.weight" } else { "output.weight" };
        let len = m.rows * m.row_bytes();
        let tiles = HeadTiles::pack(m.ty, &self.file.as_bytes()[m.offset..m.offset + len], m.rows, m.cols)
            .map_err(|e| self.err(name, format!("no memory for the head's tiles: {e}")))?;
        if !tied {
            self.file.release(m.offset, len);
        }
        Ok(Some(tiles))
    }

    /// A projection stored as floats (tern's `--type f16|f32`, or bitnet.cpp's converter where it
    /// cannot quantise a tensor): its values must be one β times {-1, 0, 1}, since the graph is
    /// ternary; they are packed to I2_S here, once, so every kernel runs it.
    fn float_projection(&self, t: &TensorInfo, rows: usize, cols: usize) -> Result<TernaryMatrix> {
        let mut values = vec![0f32; rows * cols];
        let data = self.file.data(t);
        let row_bytes = data.len() / rows;
        for (r, out) in values.chunks_exact_mut(cols).enumerate() {
            tern_formats::float_blocks::dequantize_row(t.ty, &data[r * row_bytes..(r + 1) * row_bytes], out)
                .map_err(|m| self.err(&t.name, m))?;
        }
        let beta = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut codes = Vec::with_capacity(values.len());
        for (i, &v) in values.iter().enumerate() {
            codes.push(match v {
                _ if v == 0.0 => 0,
                _ if v == beta => 1,
                _ if v == -beta => -1,
                _ => {
                    return Err(self.err(
                        &t.name,
                        format!(
                            "{} projection is not ternary: row {}, column {} holds {v}, the others ±{beta} or 0",
                            t.ty,
                            i / cols,
                            i % cols
                        ),
                    ));
                }
            });
        }
        if !beta.is_finite() {
            return Err(self.err(&t.name, format!("scale is {beta}")));
        }
        let mut bytes = ArenaBytes::take_from(None, i2s::tensor_bytes(rows, cols))
            .map_err(|e| self.err(&t.name, format!("no memory for its I2_S rows: {e}")))?;
        i2s::pack_into(&codes, rows, cols, beta, bytes.as_mut_slice());
        Ok(TernaryMatrix::packed_at_load(&t.name, rows, cols, t.offset as usize, beta, bytes))
    }

    fn ternary(&self, name: &str, rows: usize, cols: usize) -> Result<TernaryMatrix> {
        let t = self.info(name)?;
        if matches!(t.ty, TensorType::F16 | TensorType::F32 | TensorType::BF16) {
            self.expect_dims(t, &[cols as u64, rows as u64])?;
            return self.float_projection(t, rows, cols);
        }
        let layout = t.ty.traits().layout.ok_or_else(|| {
            self.err(
                name,
                format!(
                    "type {} is not a ternary layout (I2_S, TL1, TL2, TQ1_0, TQ2_0) or a float holding one",
                    t.ty
                ),
            )
        })?;
        self.expect_dims(t, &[cols as u64, rows as u64])?;
        let data = self.file.data(t);
        let md = self.file.metadata();
        let (tiles, scale) = match layout {
            Layout::I2S => {
                // A packed code of 3 is no ternary value: refuse the file rather than compute with it.
                let body = rows * i2s::row_bytes(cols);
                if let Some(pos) = data[..body].iter().position(|&b| (b & (b >> 1) & 0x55) != 0) {
                    return Err(self.err(name, format!("byte {pos} holds the invalid code 3")));
                }
                (None, i2s::scale(data, rows, cols))
            }
            Layout::TQ1_0 | Layout::TQ2_0 => {
                let block_bytes =
                    if layout == Layout::TQ1_0 { tq1_0::BLOCK_BYTES } else { tq2_0::BLOCK_BYTES };
                if layout == Layout::TQ2_0 {
                    for (i, b) in data.chunks_exact(block_bytes).enumerate() {
                        if b[..64].iter().any(|&x| (x & (x >> 1) & 0x55) != 0) {
                            return Err(self.err(name, format!("block {i} holds the invalid code 3")));
                        }
                    }
                }
                let scale = match md.get_f64(&format!("tern.scale.{name}")) {
                    Some(s) => s as f32,
                    None => {
                        // llama.cpp's files: one β per tensor shows as the same f16 d in every
                        // non-zero block; per-block scales are not supported by this runtime.
                        let ds: Vec<f32> = data
                            .chunks_exact(block_bytes)
                            .map(|b| {
                                half::f16::from_le_bytes([b[block_bytes - 2], b[block_bytes - 1]]).to_f32()
                            })
                            .collect();
                        let d = ds.iter().fold(0f32, |a, &b| a.max(b));
                        if ds.iter().any(|&x| x != 0.0 && x != d) {
                            return Err(self.err(
                                name,
                                "blocks have different scales; tern runs one scale per tensor".into(),
                            ));
                        }
                        d
                    }
                };
                (None, Some(scale))
            }
            Layout::TL1 | Layout::TL2 => {
                let tiles = tern_tiles(md, rows, cols)
                    .or_else(|| tiles::choose(layout, rows, cols))
                    .ok_or_else(|| {
                        self.err(name, format!("no tile parameters for a {rows}x{cols} {}", layout.name()))
                    })?;
                tiles::check(layout, rows, cols, tiles).map_err(|e| self.err(name, e))?;
                let scale = match self.file.tensor(&format!("{name}_scale")) {
                    Some(s) if s.ty == TensorType::F32 && s.size >= 4 => {
                        let b = &self.file.data(s)[..4];
                        Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    }
                    _ => {
                        let at = if layout == Layout::TL1 {
                            tl1::payload_bytes(rows, cols)
                        } else {
                            tl2::scale_offset(rows, cols)
                        };
                        data.get(at..at + 4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    }
                };
                // Indices a packer never writes would decode to wrong weights: refuse them once.
                layout.validate(data, rows, cols, Some(tiles)).map_err(|e| self.err(name, e))?;
                (Some(tiles), scale)
            }
        };
        let scale = scale.ok_or_else(|| self.err(name, "no scale".into()))?;
        if !scale.is_finite() || scale < 0.0 {
            return Err(self.err(name, format!("scale is {scale}; it must be finite and non-negative")));
        }
        let isa = crate::cpu::selected();
        let arena = self.arena.as_ref();
        if i2s_rows::wanted(isa, layout) {
            let bytes = i2s_rows::from_layout_in(arena, layout, data, rows, cols, tiles, scale)
                .map_err(|e| self.err(name, format!("no memory for its I2_S rows: {e}")))?;
            // The kernels read only the I2_S rows now: the file's copy need not stay resident.
            self.file.release(t.offset as usize, t.size as usize);
            return Ok(TernaryMatrix::packed_at_load(name, rows, cols, t.offset as usize, scale, bytes));
        }
        let trit_tiles = trit_tiles::wanted(isa, layout)
            .then(|| TritTiles::from_layout_in(arena, layout, data, rows, cols, tiles))
            .transpose()
            .map_err(|e| self.err(name, format!("no memory for its trit tiles: {e}")))?;
        let i2s_tiles = i2s_tiles::wanted(isa, layout)
            .then(|| I2sTiles::from_layout_in(arena, layout, data, rows, cols))
            .transpose()
            .map_err(|e| self.err(name, format!("no memory for its I2_S tiles: {e}")))?;
        if trit_tiles.is_some() || i2s_tiles.is_some() {
            // The kernels read only the tiles now: the file's copy need not stay resident.
            self.file.release(t.offset as usize, t.size as usize);
        }
        Ok(TernaryMatrix {
            name: name.to_string(),
            layout,
            rows,
            cols,
            tiles,
            offset: t.offset as usize,
            size: t.size as usize,
            scale,
            packed_at_load: None,
            trit_tiles: trit_tiles.map(Arc::new),
            i2s_tiles: i2s_tiles.map(Arc::new),
        })
    }
}
