//! `tern quickstart`: the main job end to end on the bundled tiny model, for a fresh clone.

use anyhow::{Result, bail};
use std::path::PathBuf;

/// Convert the bundled tiny BitNet checkpoint to I2_S, verify it, inspect it and generate text.
///
/// Uses tests/fixtures/tiny/bf16 from the source tree (a random model: the text is gibberish,
/// the numbers are checked) and writes target/quickstart/tiny-i2_s.gguf.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let input = root.join("tests/fixtures/tiny/bf16");
    if !input.join("config.json").is_file() {
        bail!("bundled fixture {} not found: run quickstart from a tern source checkout", input.display());
    }
    let out_dir = root.join("target/quickstart");
    std::fs::create_dir_all(&out_dir)?;
    let output = out_dir.join("tiny-i2_s.gguf");
    println!("== tern convert {} -o {} --verify", input.display(), output.display());
    crate::convert::run(crate::convert::Args {
        input,
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
        threads: None,
    })?;
    println!("\n== tern inspect {}", output.display());
    crate::inspect::run(crate::inspect::Args { file: output.clone(), json: false, full: false })?;
    println!("\n== tern run {} -p \"The quick brown fox\" -n 24 --greedy", output.display());
    crate::run::run(crate::run::Args {
        model: output,
        prompt: Some("The quick brown fox".into()),
        tokens: None,
        n_predict: 24,
        ctx: None,
        threads: None,
        kv: crate::common::KvArgs { kv_type: tern_runtime::model::KvType::F32 },
        ignore_eos: false,
        sampling: crate::common::SamplingArgs {
            temperature: 0.0,
            greedy: true,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: Some(0),
        },
    })
}
