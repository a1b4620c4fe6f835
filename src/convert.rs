//! `tern convert`: checkpoint folder → GGUF, atomically, with a progress bar and a summary.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_converters::output::AtomicFile;
use tern_converters::{Compat, ConvertOptions, ConvertSummary, OutputType, Plan};
use tern_formats::TensorType;
use tern_formats::hf::HfCheckpoint;

/// Convert a Hugging Face BitNet checkpoint folder into a GGUF file.
///
/// The input is a folder with config.json and model.safetensors (or shards plus
/// model.safetensors.index.json), holding either bf16/f16/f32 master weights (ternarised here
/// exactly as transformers does: absmean scale per tensor, round half to even) or the packed
/// uint8 form with weight_scale. The output is written to a temporary file next to OUT and
/// renamed into place only when everything succeeded.
///
/// Examples:
///   tern convert bitnet-b1.58-2B-4T-bf16 -o 2b4t-i2_s.gguf
///   tern convert bitnet-b1.58-2B-4T -o 2b4t-f32.gguf --type f32
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Hugging Face checkpoint folder (config.json + *.safetensors).
    pub input: PathBuf,
    /// Output GGUF file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Layout of the ternary projections: i2_s (bitnet.cpp, 2 bits/weight), tl1 / tl2
    /// (bitnet.cpp lookup-table layouts, 2 / 1.67 bits), tq1_0 / tq2_0 (llama.cpp, 1.69 / 2.06
    /// bits), or f16 / f32 (dequantised β·t, for debugging and tools without ternary kernels).
    /// Projections whose shape a layout cannot hold exactly are stored as i2_s, with a warning.
    #[arg(short = 't', long = "type", default_value = "i2_s", value_parser = parse_output_type)]
    pub out_type: OutputType,
    /// Which engines the file must load in: tern (any shape: tensors a layout cannot hold are
    /// stored as i2_s, i2_s rows padded with zero weights) or bitnet.cpp (i2_s/tl1/tl2 only,
    /// rows of whole 128-weight blocks, a warning for TL tiles bitnet.cpp ships no kernels for).
    #[arg(long, default_value = "tern", value_parser = ["tern", "bitnet.cpp"])]
    pub compat: String,
    /// Type of the token embedding (and of the output head unless --output-type is given).
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    pub embed_type: String,
    /// Type of the output head (lm_head, or the tied token embedding, which then serves both).
    /// q8_0 (int8 per 32 weights, ~1.1 bytes/weight) and q4_0 (~0.56) shrink the largest read of
    /// every generated token (656 MB in f16 for 2B-4T) and run integer dots; `tern verify` reports
    /// their logit error and KL divergence against the f32 reference. Default: the --embed-type.
    #[arg(long, value_parser = ["f16", "f32", "q8_0", "q4_0"])]
    pub output_type: Option<String>,
    /// Overwrite OUT if it exists.
    #[arg(short, long)]
    pub force: bool,
    /// Allow OUT inside the input folder (refused by default so a checkpoint is never altered).
    #[arg(long)]
    pub allow_output_in_input: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// The parity gate with the full prompt set of `tern verify` (default: one 8-token prompt).
    #[arg(long, conflicts_with = "no_verify")]
    pub verify: bool,
    /// Skip the parity gate. By default, before the output is renamed into place, it is checked
    /// module by module against the f32 reference forward on the input (`tern verify --quick`);
    /// a failing check leaves no output and exits 1. The reference runs one layer at a time, so
    /// the gate needs about one layer's weights in f32 beside the conversion, at any model size.
    #[arg(long)]
    pub no_verify: bool,
    /// For tests of the gate: multiply the scale of this I2_S tensor, `NAME=FACTOR`, in the
    /// temporary output before the gate runs.
    #[arg(long, hide = true)]
    pub fault_scale: Option<String>,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn parse_output_type(s: &str) -> Result<OutputType, String> {
    OutputType::parse(s)
        .ok_or_else(|| format!("unknown type {s:?} (supported: i2_s, tl1, tl2, tq1_0, tq2_0, f16, f32)"))
}

pub fn run(args: Args) -> Result<()> {
    crate::common::with_threads(args.threads, || convert(&args))?
}

fn convert(args: &Args) -> Result<()> {
    let started = Instant::now();
    check_output_path(args)?;
    let ckpt = HfCheckpoint::open(&args.input)?;
    let options = ConvertOptions {
        output: args.out_type,
        embed_type: if args.embed_type == "f32" { TensorType::F32 } else { TensorType::F16 },
        head_type: args
            .output_type
            .as_deref()
            .map(|t| TensorType::from_name(t).expect("clap checked the value")),
        compat: Compat::parse(&args.compat).expect("clap checked the value"),
    };
    let plan = Plan::new(&ckpt, options)?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let bar = progress_bar(plan.tensor_bytes(), args.quiet || args.json);
    let file = AtomicFile::create(&args.output)
        .with_context(|| format!("cannot create a file in the folder of {}", args.output.display()))?;
    let total = plan.entries.len();
    let mut done = 0;
    let temp = file.temp_path().to_path_buf();
    let written = plan.write(&ckpt, file, &temp, |e| {
        done += 1;
        bar.inc(e.bytes);
        bar.set_message(format!("{done}/{total} {}", e.spec.name));
    });
    let (file, summary) = match written {
        Err(e @ tern_converters::ConvertError::Io { .. }) => {
            bar.finish_and_clear();
            // The temporary file was removed when the writer was dropped.
            return Err(anyhow::Error::new(e).context(format!(
                "writing {} failed (disk full or a file-size limit?); nothing was left behind",
                args.output.display()
            )));
        }
        other => other?,
    };
    let mut file = file;
    bar.finish_and_clear();
    if let Some(fault) = &args.fault_scale {
        file.sync().with_context(|| format!("cannot write {}", file.temp_path().display()))?;
        inject_scale_fault(file.temp_path(), fault)?;
    }
    if !args.no_verify {
        file.sync().with_context(|| format!("cannot write {}", file.temp_path().display()))?;
        gate(args, file.temp_path())?;
    }
    file.commit().with_context(|| format!("cannot finish writing {}", args.output.display()))?;
    report(args, &plan, &summary, started.elapsed().as_secs_f64())
}

/// The parity gate on the temporary output; an error (exit 1) when it fails, which drops the
/// temporary file.
fn gate(args: &Args, temp: &Path) -> Result<()> {
    if !matches!(args.out_type, OutputType::Ternary(_)) {
        // Dequantised projections are for other tools; tern's runtime runs ternary files only.
        if args.verify {
            bail!("--verify checks ternary outputs; {} files are not run by tern", args.out_type.name());
        }
        return Ok(());
    }
    let check = crate::verify::Args {
        quick: !args.verify,
        threads: args.threads,
        ..crate::verify::Args::for_model(temp.to_path_buf(), args.input.clone())
    };
    let report = crate::verify::check(&check)?;
    if args.verify {
        let shown = crate::verify::Args { model: args.output.clone(), ..check };
        eprint!("{}", crate::verify::render(&shown, &report));
    } else if !args.quiet && !args.json {
        let worst =
            report.layers.iter().map(|l| l.modules).fold(report.embedding.max(report.output_head), f64::max);
        let verdict = if report.failure.is_some() { "FAIL" } else { "PASS" };
        eprintln!(
            "parity gate: {verdict} (worst module rel-L2 {worst:.2e} on one {}-token prompt)",
            report.prompts[0].len()
        );
    }
    match report.failure {
        Some(why) => Err(crate::common::CheckFailed(format!(
            "verification failed, nothing written: {why} (for the full report: convert with --no-verify, then `tern verify {} --reference {}`)",
            args.output.display(),
            args.input.display()
        ))
        .into()),
        None => Ok(()),
    }
}

/// `--fault-scale NAME=FACTOR`: multiplies the β in the tail of I2_S tensor NAME.
fn inject_scale_fault(path: &Path, spec: &str) -> Result<()> {
    let (name, factor) = spec.split_once('=').context("--fault-scale wants NAME=FACTOR")?;
    let factor: f32 = factor.parse().context("--fault-scale: FACTOR is not a number")?;
    let (pos, beta) = {
        let f = tern_formats::gguf::GgufFile::open(path)?;
        let t = f.tensor(name).with_context(|| format!("--fault-scale: no tensor {name}"))?;
        if t.ty != TensorType::I2S {
            bail!("--fault-scale: {name} is not I2_S");
        }
        let tail = &f.data(t)[t.size as usize - 32..];
        (t.offset + t.size - 32, f32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]))
    };
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(pos))?;
    file.write_all(&(beta * factor).to_le_bytes())?;
    Ok(())
}

/// Refuses outputs that would clobber something: an existing file (without --force), an input
/// file, or anything inside the checkpoint folder (without --allow-output-in-input).
fn check_output_path(args: &Args) -> Result<()> {
    let out = &args.output;
    if out.is_dir() {
        bail!(
            "{} is a folder; give the output file name, e.g. {}/model-i2_s.gguf",
            out.display(),
            out.display()
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!("output folder {} does not exist", parent.display());
    }
    let input = args.input.canonicalize().ok();
    let out_parent = parent.canonicalize().ok();
    let out_abs = out_parent.as_ref().and_then(|p| out.file_name().map(|n| p.join(n)));
    if let (Some(input), Some(out_abs)) = (&input, &out_abs) {
        if out_abs.starts_with(input) && is_input_file(out_abs) {
            bail!("{} is part of the input checkpoint; tern never overwrites its input", out.display());
        }
        if out_abs.starts_with(input) && !args.allow_output_in_input {
            bail!(
                "{} is inside the input folder {}; choose another folder or pass --allow-output-in-input",
                out.display(),
                input.display()
            );
        }
    }
    if out.exists() && !args.force {
        bail!("{} already exists; pass --force to overwrite it", out.display());
    }
    Ok(())
}

fn is_input_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.ends_with(".safetensors")
        || name.ends_with(".json")
        || name.ends_with(".py")
        || name.ends_with(".txt")
}

fn progress_bar(total: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        )
        .expect("static template is valid"),
    );
    bar
}

fn report(args: &Args, plan: &Plan, s: &ConvertSummary, seconds: f64) -> Result<()> {
    let size = std::fs::metadata(&args.output).map(|m| m.len()).unwrap_or(0);
    if args.json {
        let v = serde_json::json!({
            "output": args.output,
            "type": args.out_type.name(),
            "family": plan.model.family.name(),
            "source_quantization": plan.model.quant.name(),
            "file_bytes": size,
            "seconds": seconds,
            "warnings": plan.warnings,
            "notes": plan.notes,
            "summary": s,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "wrote {} ({}, {} from {} weights)",
        args.output.display(),
        args.out_type.name(),
        plan.model.family.name(),
        plan.model.quant.name()
    );
    println!(
        "  {} tensors, {} parameters ({} ternary at {:.3} bits/weight), {} in {:.1} s",
        s.tensors,
        s.parameters,
        s.ternary_parameters,
        s.ternary_bits_per_weight,
        crate::inspect::human_bytes(size),
        seconds
    );
    for note in &plan.notes {
        println!("  note: {note}");
    }
    Ok(())
}
