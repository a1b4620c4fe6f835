//! `tern quickstart`: the main job end to end on the bundled demo model, for a fresh clone.

use anyhow::{Result, bail};
use std::path::PathBuf;

/// Convert the bundled demo model to I2_S, verify it, inspect it, measure its perplexity and
/// generate text.
///
/// The demo model (tests/fixtures/demo/packed) is microsoft/bitnet-b1.58-2B-4T's architecture
/// in miniature — 6 layers, hidden 256, 5.6 M parameters — trained from scratch by
/// scripts/train_demo.py on Jane Austen's novels and Moby-Dick, and shipped in the packed form
/// 2B-4T ships (uint8 ternary codes + weight_scale). Writes target/quickstart/demo-i2_s.gguf.
#[derive(clap::Args)]
pub struct Args {
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
}

/// The prompt the run step continues.
const PROMPT: &str = "It is a truth universally acknowledged, that";

pub fn run(args: Args) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let demo = root.join("tests/fixtures/demo");
    let input = demo.join("packed");
    if !input.join("config.json").is_file() {
        bail!("bundled model {} not found: run quickstart from a tern source checkout", input.display());
    }
    let out_dir = root.join("target/quickstart");
    std::fs::create_dir_all(&out_dir)?;
    let output = out_dir.join("demo-i2_s.gguf");
    println!("== tern convert {} -o {} --verify", input.display(), output.display());
    crate::convert::run(crate::convert::Args {
        input: input.clone(),
        output: output.clone(),
        out_type: tern_converters::OutputType::Ternary(tern_formats::Layout::I2S),
        embed_type: "f16".into(),
        output_type: None,
        compat: "tern".into(),
        force: true,
        allow_output_in_input: false,
        json: false,
        quiet: false,
        verify: true,
        no_verify: false,
        fault_scale: None,
        threads: args.threads,
    })?;
    println!("\n== tern verify {} --reference {} --strict", output.display(), input.display());
    let mut verify = crate::verify::Args::for_model(output.clone(), input.clone());
    verify.strict = true;
    verify.threads = args.threads;
    crate::verify::run(verify)?;
    println!("\n== tern inspect {}", output.display());
    crate::inspect::run(crate::inspect::Args { file: output.clone(), json: false, full: false })?;
    let heldout = demo.join("heldout.txt");
    println!("\n== tern perplexity {} --file {}", output.display(), heldout.display());
    crate::perplexity::run(crate::perplexity::Args {
        model: output.clone(),
        file: heldout,
        ctx: None,
        chunks: None,
        kl_divergence: None,
        threads: args.threads,
        json: false,
        quiet: false,
    })?;
    println!("\n== tern run {} -p \"{PROMPT}\" -n 64 --temp 0.7 --seed 1", output.display());
    crate::run::run(crate::run::Args {
        model: output,
        prompt: Some(PROMPT.into()),
        tokens: None,
        n_predict: 64,
        ctx: None,
        threads: args.threads,
        kv: crate::common::KvArgs { kv_type: tern_runtime::model::KvType::F32 },
        ignore_eos: false,
        sampling: crate::common::SamplingArgs {
            temperature: 0.7,
            greedy: false,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: Some(1),
        },
    })
}
