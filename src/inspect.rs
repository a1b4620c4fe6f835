//! `tern inspect`: a readable (or `--json`) description of a GGUF file, a safetensors file or a
//! Hugging Face checkpoint folder.

use anyhow::{Context, Result};
use serde_json::{Value as Json, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use tern_formats::gguf::{GgufFile, Value};
use tern_formats::hf::HfCheckpoint;
use tern_formats::safetensors_file::SafetensorsFile;

/// Describe a GGUF file, a safetensors file or a Hugging Face checkpoint folder.
///
/// Shows the metadata (long arrays summarised unless --full), every tensor with its type, shape
/// (GGUF files: dims innermost first, as ggml; safetensors: PyTorch order) and size, and totals,
/// including bits per weight of the ternary tensors.
#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a .safetensors file, or a checkpoint folder.
    pub file: PathBuf,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not summarise long metadata arrays (tokens, merges) in --json output.
    #[arg(long)]
    pub full: bool,
}

pub fn run(args: Args) -> Result<()> {
    let report = if args.file.is_dir() {
        describe_checkpoint(&args.file)?
    } else if is_gguf(&args.file)? {
        describe_gguf(&args.file, args.full)?
    } else {
        describe_safetensors(&SafetensorsFile::open(&args.file)?)
    };
    let text = if args.json { serde_json::to_string_pretty(&report)? + "\n" } else { render_text(&report) };
    crate::print_stdout(&text)
}

fn is_gguf(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = f.read(&mut magic).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n == 4 && &magic == tern_formats::gguf::MAGIC)
}

const SUMMARY_ITEMS: usize = 8;

fn value_json(v: &Value, full: bool) -> Json {
    match v {
        Value::String(s) => json!(s),
        Value::Bool(b) => json!(b),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Array(a) => {
            if full || a.len() <= SUMMARY_ITEMS {
                Json::Array(a.iter().map(|i| value_json(&i, full)).collect())
            } else {
                json!({
                    "element_type": a.elem_type().name(),
                    "len": a.len(),
                    "first": a.iter().take(SUMMARY_ITEMS).map(|i| value_json(&i, full)).collect::<Vec<_>>(),
                })
            }
        }
        other => other.as_u64().map(|u| json!(u)).unwrap_or_else(|| match other {
            Value::I8(x) => json!(x),
            Value::I16(x) => json!(x),
            Value::I32(x) => json!(x),
            Value::I64(x) => json!(x),
            _ => Json::Null,
        }),
    }
}

fn describe_gguf(path: &Path, full: bool) -> Result<Json> {
    let f = GgufFile::open(path)?;
    let metadata: Vec<Json> = f
        .metadata()
        .iter()
        .map(|(k, v)| {
            let mut e = json!({"key": k, "type": v.value_type().name(), "value": value_json(v, full)});
            if let Value::Array(a) = v {
                e["type"] = json!(format!("array[{}]", a.elem_type().name()));
                e["text"] = json!(format!("{v}"));
                e["len"] = json!(a.len());
            } else {
                e["text"] = json!(format!("{v}"));
            }
            e
        })
        .collect();
    let mut params = 0u64;
    let mut ternary_params = 0u64;
    let mut ternary_bytes = 0u64;
    let tensors: Vec<Json> = f
        .tensors()
        .iter()
        .map(|t| {
            let n = t.elements();
            params += n;
            if t.ty.is_ternary() {
                ternary_params += n;
                ternary_bytes += t.size;
            }
            json!({"name": t.name, "type": t.ty.name(), "type_id": t.ty.id(), "shape": t.dims, "offset": t.offset, "bytes": t.size})
        })
        .collect();
    Ok(json!({
        "kind": "gguf",
        "path": path,
        "version": f.header.version,
        "alignment": f.header.alignment,
        "file_bytes": f.file_size(),
        "metadata": metadata,
        "tensors": tensors,
        "totals": totals(params, f.tensors().iter().map(|t| t.size).sum(), ternary_params, ternary_bytes),
    }))
}

fn totals(params: u64, bytes: u64, ternary_params: u64, ternary_bytes: u64) -> Json {
    let bpw = if ternary_params > 0 { ternary_bytes as f64 * 8.0 / ternary_params as f64 } else { 0.0 };
    json!({
        "parameters": params,
        "tensor_bytes": bytes,
        "ternary_parameters": ternary_params,
        "ternary_bytes": ternary_bytes,
        "ternary_bits_per_weight": bpw,
    })
}

fn safetensors_tensors(file: &SafetensorsFile) -> (Vec<Json>, u64, u64) {
    let mut params = 0u64;
    let mut bytes = 0u64;
    let tensors = file
        .tensors()
        .iter()
        .map(|t| {
            params += t.elements() as u64;
            bytes += (t.end - t.start) as u64;
            json!({"name": t.name, "type": format!("{:?}", t.dtype), "shape": t.shape, "offset": t.start, "bytes": t.end - t.start})
        })
        .collect();
    (tensors, params, bytes)
}

fn describe_safetensors(file: &SafetensorsFile) -> Json {
    let (tensors, params, bytes) = safetensors_tensors(file);
    let metadata: Vec<Json> = file
        .user_metadata
        .iter()
        .flatten()
        .map(|(k, v)| json!({"key": k, "type": "string", "value": v, "text": format!("{v:?}")}))
        .collect();
    json!({
        "kind": "safetensors",
        "path": file.path,
        "file_bytes": file.file_size(),
        "metadata": metadata,
        "tensors": tensors,
        "totals": totals(params, bytes, 0, 0),
    })
}

fn describe_checkpoint(dir: &Path) -> Result<Json> {
    let ckpt = HfCheckpoint::open(dir)?;
    let c = &ckpt.config;
    let spec = tern_converters::ModelSpec::from_checkpoint(&ckpt);
    let mut metadata = vec![
        json!({"key": "architectures", "type": "config", "text": format!("{:?}", c.architectures)}),
        json!({"key": "model_type", "type": "config", "text": c.model_type}),
        json!({"key": "dims", "type": "config", "text": format!(
            "hidden {}, intermediate {}, layers {}, heads {}/{} kv, head_dim {}, vocab {}",
            c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.head_dim, c.vocab_size)}),
        json!({"key": "shards", "type": "files", "text": format!("{}", ckpt.shards.len())}),
    ];
    match &spec {
        Ok(s) => {
            metadata.push(json!({"key": "tern", "type": "detected", "text": format!(
            "family {}, {} weights, activation {}, lm_head {}",
            s.family.name(), s.quant.name(), s.activation.name(), if s.tied { "tied" } else { "separate" })}))
        }
        Err(e) => {
            metadata.push(json!({"key": "tern", "type": "detected", "text": format!("cannot convert: {e}")}))
        }
    }
    let mut tensors = Vec::new();
    let (mut params, mut bytes) = (0, 0);
    for shard in &ckpt.shards {
        let (t, p, b) = safetensors_tensors(shard);
        tensors.extend(t);
        params += p;
        bytes += b;
    }
    Ok(json!({
        "kind": "hf-checkpoint",
        "path": dir,
        "file_bytes": bytes,
        "metadata": metadata,
        "tensors": tensors,
        "totals": totals(params, bytes, 0, 0),
    }))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.2} {}", UNITS[u]) }
}

fn render_text(r: &Json) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let kind = r["kind"].as_str().unwrap_or("");
    let mut head = format!("{} ({kind}", r["path"].as_str().unwrap_or(""));
    if let Some(v) = r["version"].as_u64() {
        head += &format!(" v{v}, alignment {}", r["alignment"]);
    }
    head += &format!(", {})", human_bytes(r["file_bytes"].as_u64().unwrap_or(0)));
    let _ = writeln!(out, "{head}");
    let metadata = r["metadata"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\nmetadata ({} keys):", metadata.len());
    for m in &metadata {
        let _ = writeln!(
            out,
            "  {:<48} {:<14} {}",
            m["key"].as_str().unwrap_or(""),
            m["type"].as_str().unwrap_or(""),
            m["text"].as_str().unwrap_or("")
        );
    }
    let tensors = r["tensors"].as_array().cloned().unwrap_or_default();
    let shape_note = if kind == "gguf" { "dims (innermost first)" } else { "shape" };
    let _ = writeln!(out, "\ntensors ({}):", tensors.len());
    let _ = writeln!(out, "  {:<40} {:<6} {:<22} {:>12}", "name", "type", shape_note, "bytes");
    for t in &tensors {
        let shape: Vec<String> = t["shape"].as_array().into_iter().flatten().map(|d| d.to_string()).collect();
        let _ = writeln!(
            out,
            "  {:<40} {:<6} {:<22} {:>12}",
            t["name"].as_str().unwrap_or(""),
            t["type"].as_str().unwrap_or(""),
            format!("[{}]", shape.join(", ")),
            t["bytes"]
        );
    }
    let tot = &r["totals"];
    let _ = writeln!(
        out,
        "\ntotals: {} tensors, {} parameters, {} of tensor data",
        tensors.len(),
        tot["parameters"],
        human_bytes(tot["tensor_bytes"].as_u64().unwrap_or(0))
    );
    if tot["ternary_parameters"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "        {} ternary parameters in {} ({:.3} bits per weight)",
            tot["ternary_parameters"],
            human_bytes(tot["ternary_bytes"].as_u64().unwrap_or(0)),
            tot["ternary_bits_per_weight"].as_f64().unwrap_or(0.0)
        );
    }
    out
}
