//! The conversion: a [`Plan`] decides every output tensor (name, type, dims) and the metadata
//! from the checkpoint's header alone, so the GGUF header can be written first; then
//! [`Plan::write`] streams the tensors one at a time (read → ternarise or unpack → pack → write).
//! Peak memory is one tensor in a few forms, never the model.

use crate::model::{ModelSpec, PROJECTIONS, Projection, QuantMode, RopePairing};
use crate::weights::load_ternary_with;
use crate::{ConvertError, Result, tokenizer};
use rayon::prelude::*;
use std::io::Write;
use tern_formats::gguf::{Array, GgufWriter, Metadata, TensorSpec, Value, ValueType};
use tern_formats::hf::HfCheckpoint;
use tern_formats::tiles::Tiles;
use tern_formats::{Layout, TensorType, i2s};

/// What the ternary projections become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// A packed ternary layout (I2_S, ...).
    Ternary(Layout),
    /// Dequantised β·t in f16 (debugging, other tools).
    F16,
    /// Dequantised β·t in f32: exact.
    F32,
}

impl OutputType {
    pub fn parse(name: &str) -> Option<OutputType> {
        match name.to_ascii_lowercase().as_str() {
            "f16" => Some(OutputType::F16),
            "f32" => Some(OutputType::F32),
            other => Layout::from_name(other).map(OutputType::Ternary),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OutputType::Ternary(l) => l.name(),
            OutputType::F16 => "f16",
            OutputType::F32 => "f32",
        }
    }

    fn tensor_type(self) -> TensorType {
        match self {
            OutputType::Ternary(l) => l.tensor_type(),
            OutputType::F16 => TensorType::F16,
            OutputType::F32 => TensorType::F32,
        }
    }

    /// `general.file_type` (llama.cpp's llama_ftype).
    fn file_type(self) -> u32 {
        match self {
            OutputType::Ternary(l) => l.traits().file_type,
            OutputType::F16 => 1,
            OutputType::F32 => 0,
        }
    }
}

/// Which engines the output must load in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// tern's own rules: any shape (tensors a layout cannot hold fall back to I2_S, I2_S rows
    /// are padded with zero weights).
    #[default]
    Tern,
    /// Only what bitnet.cpp can load and run: I2_S, TL1, TL2 (or float), rows of whole
    /// 128-weight blocks; TL tensors that do not fit fall back to I2_S with a warning.
    BitnetCpp,
}

impl Compat {
    pub fn parse(name: &str) -> Option<Compat> {
        match name {
            "tern" => Some(Compat::Tern),
            "bitnet.cpp" => Some(Compat::BitnetCpp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compat::Tern => "tern",
            Compat::BitnetCpp => "bitnet.cpp",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    pub output: OutputType,
    /// Type of the token embedding (and of the head, unless `head_type` says otherwise): F16 (as
    /// bitnet.cpp) or F32.
    pub embed_type: TensorType,
    /// Type of the output head — `output.weight`, or the token embedding when tied, which then
    /// serves both: F16, F32, Q8_0 or Q4_0. None: `embed_type`.
    pub head_type: Option<TensorType>,
    pub compat: Compat,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            output: OutputType::Ternary(Layout::I2S),
            embed_type: TensorType::F16,
            head_type: None,
            compat: Compat::Tern,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Source {
    /// A float tensor copied (converted to the spec's type).
    Float { hf: String },
    /// A ternary projection, packed in `layout` (None: dequantised to the entry's float type).
    /// q and k rows are reordered per head of `head_dim` rows when the family's GGUF arch pairs
    /// RoPE elements differently from the checkpoint (`reorder_heads`, see [`RopePairing`]).
    Ternary {
        hf: String,
        rows: usize,
        cols: usize,
        layout: Option<Layout>,
        tiles: Option<Tiles>,
        reorder_heads: Option<(RopePairing, usize)>,
    },
    /// The f32 scale of the ternary tensor just before (bitnet.cpp's `<name>_scale` tensor).
    ScaleOfPrevious,
}

#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub spec: TensorSpec,
    pub source: Source,
    pub bytes: u64,
}

pub struct Plan {
    pub model: ModelSpec,
    pub options: ConvertOptions,
    pub metadata: Metadata,
    pub entries: Vec<PlanEntry>,
    /// Things the user should know (e.g. tern-only padded rows).
    pub warnings: Vec<String>,
    /// Which other engines can run the file, where that is not what a user would assume.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConvertSummary {
    pub tensors: usize,
    pub parameters: u64,
    pub ternary_parameters: u64,
    pub tensor_bytes: u64,
    pub ternary_bytes: u64,
    /// Bits per weight of the ternary projections as stored (scales and padding included).
    pub ternary_bits_per_weight: f64,
}

impl Plan {
    pub fn new(ckpt: &HfCheckpoint, options: ConvertOptions) -> Result<Plan> {
        let model = ModelSpec::from_checkpoint(ckpt)?;
        if !matches!(options.embed_type, TensorType::F16 | TensorType::F32) {
            return Err(ConvertError::model(&ckpt.dir, "embeddings can be stored as f16 or f32 only"));
        }
        let head_type = options.head_type.unwrap_or(options.embed_type);
        if !tern_formats::float_blocks::is_writable(head_type) {
            return Err(ConvertError::model(
                &ckpt.dir,
                format!("the output head can be stored as f16, f32, q8_0 or q4_0, not {head_type}"),
            ));
        }
        if !(model.hidden as u64).is_multiple_of(32)
            && matches!(head_type, TensorType::Q8_0 | TensorType::Q4_0)
        {
            return Err(ConvertError::model(
                &ckpt.dir,
                format!("{head_type} needs a hidden size that is a multiple of 32, not {}", model.hidden),
            ));
        }
        // Tied: the one matrix is both the embedding and the head, stored as the head asks.
        let embed_type = if model.tied { head_type } else { options.embed_type };
        if options.compat == Compat::BitnetCpp
            && matches!(options.output, OutputType::Ternary(Layout::TQ1_0 | Layout::TQ2_0))
        {
            return Err(ConvertError::model(
                &ckpt.dir,
                format!(
                    "--compat bitnet.cpp: bitnet.cpp runs i2_s, tl1 and tl2; {} is llama.cpp's (use --compat tern)",
                    options.output.name()
                ),
            ));
        }
        let mut warnings = Vec::new();
        let mut entries = Vec::new();
        let mut float = |hf: String, gguf: String, ty: TensorType, dims: Vec<u64>| -> Result<()> {
            entries.push(entry(TensorSpec { name: gguf, ty, dims }, Source::Float { hf })?);
            Ok(())
        };
        let h = model.hidden as u64;
        float(
            "model.embed_tokens.weight".into(),
            "token_embd.weight".into(),
            embed_type,
            vec![h, model.vocab as u64],
        )?;
        float("model.norm.weight".into(), "output_norm.weight".into(), TensorType::F32, vec![h])?;
        if !model.tied {
            float("lm_head.weight".into(), "output.weight".into(), head_type, vec![h, model.vocab as u64])?;
        }
        let fam = model.family.traits();
        for l in 0..model.layers {
            let hf = |s: &str| format!("model.layers.{l}.{s}.weight");
            let gg = |s: &str| format!("blk.{l}.{s}.weight");
            float(hf("input_layernorm"), gg("attn_norm"), TensorType::F32, vec![h])?;
            if let Some(n) = fam.attn_sub_norm {
                float(
                    hf(n),
                    gg("attn_sub_norm"),
                    TensorType::F32,
                    vec![(model.heads * model.head_dim) as u64],
                )?;
            }
            float(hf("post_attention_layernorm"), gg("ffn_norm"), TensorType::F32, vec![h])?;
            if let Some(n) = fam.ffn_sub_norm {
                float(hf(n), gg("ffn_sub_norm"), TensorType::F32, vec![model.intermediate as u64])?;
            }
        }
        // Each projection in the requested layout when its shape fits the layout exactly, else I2_S.
        let mut fallbacks: Vec<String> = Vec::new();
        let mut tile_table: Vec<(usize, usize, Tiles)> = Vec::new();
        for l in 0..model.layers {
            for p in PROJECTIONS {
                let (rows, cols) = model.projection_shape(p);
                let name = format!("blk.{l}.{}.weight", p.gguf_suffix());
                let (ty, layout, tiles) = match options.output {
                    OutputType::Ternary(wanted) => match wanted.fit(rows, cols) {
                        Some(tiles) => (wanted.tensor_type(), Some(wanted), tiles),
                        None => {
                            fallbacks.push(format!("{name} ({rows}x{cols})"));
                            (TensorType::I2S, Some(Layout::I2S), None)
                        }
                    },
                    other => (other.tensor_type(), None, None),
                };
                if let Some(t) = tiles.filter(|_| !tile_table.iter().any(|&(r, c, _)| (r, c) == (rows, cols)))
                {
                    tile_table.push((rows, cols, t));
                }
                let spec = TensorSpec { name: name.clone(), ty, dims: vec![cols as u64, rows as u64] };
                let reorder_heads = (matches!(p, Projection::Q | Projection::K)
                    && fam.rope_pairing != RopePairing::HalfSplit)
                    .then_some((fam.rope_pairing, model.head_dim));
                entries.push(entry(
                    spec,
                    Source::Ternary {
                        hf: model.hf_projection(l, p),
                        rows,
                        cols,
                        layout,
                        tiles,
                        reorder_heads,
                    },
                )?);
                if layout.is_some_and(|l| l.traits().scale_tensor) {
                    let spec =
                        TensorSpec { name: format!("{name}_scale"), ty: TensorType::F32, dims: vec![1] };
                    entries.push(entry(spec, Source::ScaleOfPrevious)?);
                }
            }
        }
        if !fallbacks.is_empty() {
            warnings.push(format!(
                "{} of {} projections do not fit {}'s blocks or tiles exactly and are stored as I2_S instead (docs/formats.md): {}",
                fallbacks.len(),
                model.layers * PROJECTIONS.len(),
                options.output.name(),
                fallbacks.iter().take(6).cloned().collect::<Vec<_>>().join(", ")
                    + if fallbacks.len() > 6 { ", …" } else { "" }
            ));
        }
        // Keep the file in a readable order: embeddings and output first, then layer by layer.
        let layer_of = |e: &PlanEntry| -> usize {
            e.spec
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
                .map_or(0, |l| l + 1)
        };
        entries.sort_by_key(layer_of);

        if options.compat == Compat::BitnetCpp {
            bitnet_cpp_checks(&ckpt.dir, options.output, &entries, &tile_table, &mut warnings)?;
        }
        let mut odd: Vec<u64> = entries
            .iter()
            .filter(|e| e.spec.ty == TensorType::I2S && !(e.spec.dims[0] as usize).is_multiple_of(i2s::BLOCK))
            .map(|e| e.spec.dims[0])
            .collect();
        odd.sort_unstable();
        odd.dedup();
        if !odd.is_empty() {
            let odd: Vec<String> = odd.iter().map(u64::to_string).collect();
            warnings.push(format!(
                "row lengths {} are not multiples of 128: I2_S rows are padded with zero weights (tern-only; bitnet.cpp has no kernel for such shapes)",
                odd.join(", ")
            ));
        }
        if model.quant == QuantMode::Online && matches!(options.output, OutputType::F16) {
            warnings
                .push("f16 output rounds each tensor's scale β to f16 (relative error up to 2^-11)".into());
        }

        let mut metadata = Metadata::default();
        model_metadata(&model, options, &mut metadata);
        if entries.iter().any(|e| e.spec.ty == TensorType::I2S) {
            metadata.set("tern.i2_s.layout", Value::String("x86-act-parallel-128".into()));
        }
        if !tile_table.is_empty() {
            // (M, K, BM, BK, bm) per shape, like bitnet.cpp's kernel_config.ini.
            let flat = tile_table.iter().flat_map(|&(m, k, t)| [m, k, t.rows, t.cols, t.sub_rows]);
            metadata.set(
                "tern.tiles",
                Value::Array(Array::from_values(
                    ValueType::U32,
                    flat.map(|v| Value::U32(v as u32)).collect(),
                )),
            );
        }
        // TQ blocks carry an f16 scale; tern's runtime uses the exact f32 β, written here, so every
        // layout computes the same numbers. Needs β before the header: one extra read pass, a
        // tensor per thread (each β is its own tensor's, so the order does not matter).
        let tq: Vec<(&str, &str)> = entries
            .iter()
            .filter_map(|e| match &e.source {
                Source::Ternary { hf, layout: Some(Layout::TQ1_0 | Layout::TQ2_0), .. } => {
                    Some((e.spec.name.as_str(), hf.as_str()))
                }
                _ => None,
            })
            .collect();
        let betas: Vec<Result<f32>> =
            tq.par_iter().map(|(_, hf)| crate::weights::beta(ckpt, hf, model.quant)).collect();
        // The first failure in file order, as a serial pass would report it.
        let betas = betas.into_iter().collect::<Result<Vec<f32>>>()?;
        for ((name, _), beta) in tq.iter().zip(betas) {
            metadata.set(format!("tern.scale.{name}"), Value::F32(beta));
        }
        tokenizer::add_tokenizer(&ckpt.dir, model.vocab, model.bos, &model.eos, &mut metadata)?;
        let notes = engine_notes(model.gguf_arch(), options.output);
        Ok(Plan { model, options, metadata, entries, warnings, notes })
    }

    /// Sum of all tensor data bytes (what the progress bar counts).
    pub fn tensor_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Streams the GGUF into `out`, calling `progress` after each tensor.
    /// Streams the GGUF into `out`; `out_path` names it in I/O errors (a full disk, say).
    pub fn write<W: Write>(
        &self,
        ckpt: &HfCheckpoint,
        out: W,
        out_path: &std::path::Path,
        mut progress: impl FnMut(&PlanEntry),
    ) -> Result<(W, ConvertSummary)> {
        let io_err = |e: std::io::Error| ConvertError::Io { path: out_path.to_path_buf(), source: e };
        let specs = self.entries.iter().map(|e| e.spec.clone()).collect();
        let mut w = GgufWriter::new(out, &self.metadata, specs).map_err(io_err)?;
        let mut summary = ConvertSummary { tensors: self.entries.len(), ..Default::default() };
        let mut last_beta = None;
        let mut scratch = Vec::new();
        for e in &self.entries {
            let params: u64 = e.spec.dims.iter().product();
            summary.parameters += params;
            summary.tensor_bytes += e.bytes;
            let bytes = match &e.source {
                Source::Float { hf } => {
                    // In pieces: the token embedding alone would be 1.3 GB as f32.
                    let t = ckpt.require(hf)?;
                    let mut failure = None;
                    let mut first = 0;
                    let written = w.write_tensor_parts(&e.spec.name, |sink| {
                        let r = t.for_each_f32_chunk(FLOAT_CHUNK, |chunk| {
                            let bytes = encode_float(chunk, e.spec.ty, first).map_err(|m| t.error(m))?;
                            first += chunk.len();
                            sink(&bytes).map_err(|err| tern_formats::FormatError::io(out_path, err))
                        });
                        r.map_err(|err| {
                            failure = Some(err);
                            std::io::Error::other("stopped")
                        })
                    });
                    release(t);
                    match (failure, written) {
                        (Some(err), _) => return Err(err.into()),
                        (None, r) => r.map_err(io_err)?,
                    }
                    progress(e);
                    continue;
                }
                Source::Ternary { hf, rows, cols, layout, tiles, reorder_heads } => {
                    summary.ternary_parameters += params;
                    summary.ternary_bytes += e.bytes;
                    let mut tw = load_ternary_with(ckpt, hf, *rows, *cols, self.model.quant, &mut scratch)?;
                    if let Some((pairing, head_dim)) = reorder_heads {
                        tw.codes = pairing.reorder(&tw.codes, *head_dim, *cols);
                    }
                    for name in [hf.clone(), format!("{hf}_scale"), hf.replace(".weight", ".weight_scale")] {
                        if let Some(t) = ckpt.get(&name) {
                            release(t);
                        }
                    }
                    last_beta = Some(tw.beta);
                    match layout {
                        Some(l) => l.pack(&tw.codes, tw.rows, tw.cols, tw.beta, *tiles),
                        None => {
                            let values: Vec<f32> = tw.codes.iter().map(|&t| t as f32 * tw.beta).collect();
                            encode_float(&values, e.spec.ty, 0).expect("β·t of a finite β always fits")
                        }
                    }
                }
                Source::ScaleOfPrevious => {
                    let beta = last_beta.expect("a scale tensor follows its weight in the plan");
                    summary.ternary_bytes += e.bytes;
                    beta.to_le_bytes().to_vec()
                }
            };
            w.write_tensor(&e.spec.name, &bytes).map_err(io_err)?;
            progress(e);
        }
        if summary.ternary_parameters > 0 {
            summary.ternary_bits_per_weight =
                summary.ternary_bytes as f64 * 8.0 / summary.ternary_parameters as f64;
        }
        Ok((w.finish().map_err(io_err)?, summary))
    }
}

/// `--compat bitnet.cpp`: refuses what bitnet.cpp cannot load (I2_S rows that are not whole
/// 128-weight blocks) and warns about TL tiles it has no generated kernels for.
fn bitnet_cpp_checks(
    dir: &std::path::Path,
    output: OutputType,
    entries: &[PlanEntry],
    tile_table: &[(usize, usize, Tiles)],
    warnings: &mut Vec<String>,
) -> Result<()> {
    let padded: Vec<String> = entries
        .iter()
        .filter(|e| e.spec.ty == TensorType::I2S && !(e.spec.dims[0] as usize).is_multiple_of(i2s::BLOCK))
        .map(|e| format!("{} ({}x{})", e.spec.name, e.spec.dims[1], e.spec.dims[0]))
        .collect();
    if !padded.is_empty() {
        return Err(ConvertError::model(
            dir,
            format!(
                "--compat bitnet.cpp: bitnet.cpp's I2_S needs rows of whole 128-weight blocks, and {} projection(s) have none: {}{} (use --compat tern: tern pads them)",
                padded.len(),
                padded.iter().take(4).cloned().collect::<Vec<_>>().join(", "),
                if padded.len() > 4 { ", …" } else { "" }
            ),
        ));
    }
    let generated: Vec<String> = match output {
        OutputType::Ternary(layout @ (Layout::TL1 | Layout::TL2)) => tile_table
            .iter()
            .filter(|&&(m, k, t)| !tern_formats::tiles::is_preset(layout, m, k, t))
            .map(|&(m, k, t)| format!("{m}x{k}: BM={} BK={} bm={}", t.rows, t.cols, t.sub_rows))
            .collect(),
        _ => Vec::new(),
    };
    if !generated.is_empty() {
        warnings.push(format!(
            "--compat bitnet.cpp: bitnet.cpp ships TL kernels only for the shapes of its presets; generate kernels (its codegen script) for {}",
            generated.join(", ")
        ));
    }
    Ok(())
}

fn entry(spec: TensorSpec, source: Source) -> Result<PlanEntry> {
    let bytes = spec
        .ty
        .byte_size(&spec.dims)
        .map_err(|m| ConvertError::model("<plan>", format!("tensor '{}': {m}", spec.name)))?;
    Ok(PlanEntry { spec, source, bytes })
}

/// Elements per piece when streaming float tensors (4 MB of f32).
const FLOAT_CHUNK: usize = 1 << 20;

/// Input pages of a tensor already converted leave the resident set (see `SafetensorsFile::release`).
fn release(t: tern_formats::hf::TensorRef) {
    #[cfg(unix)]
    t.release();
}

/// `values` (elements `first..` of a tensor, for messages; a whole number of 32-element blocks
/// unless it is the tensor's end) in the output float type, encoded in parallel pieces.
fn encode_float(values: &[f32], ty: TensorType, first: usize) -> Result<Vec<u8>, String> {
    const PIECE: usize = 1 << 14;
    let pieces: Vec<Result<Vec<u8>, String>> = values
        .par_chunks(PIECE)
        .enumerate()
        .map(|(i, piece)| {
            let mut out = Vec::new();
            tern_formats::float_blocks::quantize_row(ty, piece, &mut out).map_err(|mut e| {
                // The index within the tensor, and what to do about an f16 overflow.
                e.index = e.index.map(|k| first + i * PIECE + k);
                let hint = if ty == TensorType::F16 && e.index.is_some() {
                    "; convert with --embed-type f32"
                } else {
                    ""
                };
                format!("{e}{hint}")
            })?;
            Ok(out)
        })
        .collect();
    let mut out = Vec::with_capacity(ty.byte_size(&[values.len() as u64]).unwrap_or(0) as usize);
    for p in pieces {
        out.extend(p?);
    }
    Ok(out)
}

fn model_metadata(m: &ModelSpec, options: ConvertOptions, md: &mut Metadata) {
    let arch = m.gguf_arch();
    let u32v = |v: usize| Value::U32(v as u32);
    md.set("general.architecture", Value::String(arch.into()));
    md.set("general.name", Value::String(m.name.clone()));
    md.set("general.file_type", Value::U32(options.output.file_type()));
    md.set("general.alignment", Value::U32(32));
    md.set(format!("{arch}.vocab_size"), u32v(m.vocab));
    md.set(format!("{arch}.context_length"), u32v(m.context));
    md.set(format!("{arch}.embedding_length"), u32v(m.hidden));
    md.set(format!("{arch}.block_count"), u32v(m.layers));
    md.set(format!("{arch}.feed_forward_length"), u32v(m.intermediate));
    md.set(format!("{arch}.attention.head_count"), u32v(m.heads));
    md.set(format!("{arch}.attention.head_count_kv"), u32v(m.kv_heads));
    md.set(format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(m.rms_eps));
    md.set(format!("{arch}.rope.freq_base"), Value::F32(m.rope_theta));
    md.set(format!("{arch}.rope.dimension_count"), u32v(m.head_dim));
    if m.head_dim * m.heads != m.hidden {
        md.set(format!("{arch}.attention.key_length"), u32v(m.head_dim));
        md.set(format!("{arch}.attention.value_length"), u32v(m.head_dim));
    }
    // tern's own keys: what its runtime needs and must never guess.
    md.set("tern.version", Value::String(env!("CARGO_PKG_VERSION").into()));
    md.set("tern.family", Value::String(m.family.name().into()));
    md.set("tern.activation", Value::String(m.activation.name().into()));
    md.set("tern.source_quantization", Value::String(m.quant.name().into()));
    // half-split: q/k rows as in the HF checkpoint; interleaved: permuted per head for llama.cpp.
    md.set("tern.rope.pairing", Value::String(m.family.traits().rope_pairing.name().into()));
}

/// What other engines make of a file of `arch` in `output`, where a user would expect otherwise:
/// llama.cpp's own TQ types in bitnet.cpp's architecture name, which llama.cpp does not know.
pub fn engine_notes(arch: &str, output: OutputType) -> Vec<String> {
    let tq = matches!(output, OutputType::Ternary(Layout::TQ1_0 | Layout::TQ2_0));
    if tq && arch == "bitnet-b1.58" {
        return vec![format!(
            "llama.cpp cannot load this file: its architecture `{arch}` is bitnet.cpp's name for the 2B-4T graph, \
             which llama.cpp does not have; relabelled `bitnet`, llama.cpp would run the FFN with SiLU instead \
             of relu² and compute wrong results. tern runs it (use --type i2_s, tl1 or tl2 for bitnet.cpp)"
        )];
    }
    Vec::new()
}
