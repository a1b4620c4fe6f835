//! The weights of a GGUF model, validated once at load: every tensor the graph needs is present
//! with the expected type and dims (the GGUF reader already proved each byte range lies inside
//! the file), ternary scales are finite, and packed codes are never 3 — checked once here, so a
//! corrupt file fails at load instead of computing wrong numbers.
//! Weight bytes stay in the memory map; only norms (a few KB) are copied out.

use super::config::ModelConfig;
use crate::{Result, RuntimeError};
use std::path::Path;
use tern_formats::gguf::{GgufFile, TensorInfo};
use tern_formats::{TensorType, i2s};

/// A packed ternary matrix `[rows = out, cols = in]` inside the mapped file.
#[derive(Debug, Clone)]
pub struct TernaryMatrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    /// Byte offset of row 0 in the file.
    pub offset: usize,
    /// β: W ≈ β · t.
    pub scale: f32,
}

impl TernaryMatrix {
    /// Activations per row after padding to whole blocks.
    pub fn padded_cols(&self) -> usize {
        self.row_bytes * 4
    }
}

/// A float matrix (embeddings, lm_head) `[rows, cols]`, F16 or F32.
#[derive(Debug, Clone)]
pub struct FloatMatrix {
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
}

impl FloatMatrix {
    pub fn row_bytes(&self) -> usize {
        self.cols * if self.ty == TensorType::F16 { 2 } else { 4 }
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
    pub tied: bool,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
}

impl Model {
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file)?;
        let c = &config;
        let l = Loader { file: &file };
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
        Ok(Model { embed, output, tied, output_norm, layers, config, file })
    }

    /// Bytes of the file at a matrix's offset.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        &self.file.as_bytes()[offset..offset + len]
    }

    pub fn ternary_rows(&self, m: &TernaryMatrix) -> &[u8] {
        self.bytes(m.offset, m.rows * m.row_bytes)
    }

    pub fn float_row(&self, m: &FloatMatrix, row: usize) -> &[u8] {
        self.bytes(m.offset + row * m.row_bytes(), m.row_bytes())
    }

    /// Ternary parameters and weight bytes read per generated token (for benchmarks).
    pub fn bytes_per_token(&self) -> u64 {
        let ternary: u64 = self
            .layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .map(|m| (m.rows * m.row_bytes) as u64)
            .sum();
        ternary + (self.output.rows * self.output.row_bytes()) as u64
    }
}

struct Loader<'a> {
    file: &'a GgufFile,
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
        if !matches!(t.ty, TensorType::F16 | TensorType::F32) {
            return Err(self.err(name, format!("type {} is not supported here (F16 or F32)", t.ty)));
        }
        self.expect_dims(t, &[cols as u64, rows as u64])?;
        Ok(FloatMatrix { ty: t.ty, rows, cols, offset: t.offset as usize })
    }

    fn ternary(&self, name: &str, rows: usize, cols: usize) -> Result<TernaryMatrix> {
        let t = self.info(name)?;
        if t.ty != TensorType::I2S {
            return Err(self.err(
                name,
                format!(
                    "type {}: the runtime runs I2_S projections (TL1/TL2/TQ* come with the layouts work)",
                    t.ty
                ),
            ));
        }
        self.expect_dims(t, &[cols as u64, rows as u64])?;
        let data = self.file.data(t);
        let scale = i2s::scale(data, rows, cols).ok_or_else(|| self.err(name, "no scale tail".into()))?;
        if !scale.is_finite() || scale < 0.0 {
            return Err(self.err(name, format!("scale is {scale}; it must be finite and non-negative")));
        }
        let row_bytes = i2s::row_bytes(cols);
        // A packed code of 3 is no ternary value: refuse the file rather than compute with it.
        if let Some(pos) = data[..rows * row_bytes].iter().position(|&b| (b & (b >> 1) & 0x55) != 0) {
            return Err(self.err(name, format!("byte {pos} holds the invalid code 3")));
        }
        Ok(TernaryMatrix { name: name.to_string(), rows, cols, row_bytes, offset: t.offset as usize, scale })
    }
}
