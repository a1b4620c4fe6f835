//! `tern quickstart`: the main job end to end on the bundled tiny model, for a fresh clone.

use anyhow::{Result, bail};
use std::path::PathBuf;

/// Convert the bundled tiny BitNet checkpoint to I2_S and inspect the result.
///
/// Uses tests/fixtures/tiny/bf16 from the source tree and writes target/quickstart/tiny-i2_s.gguf.
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
    println!("== tern convert {} -o {}", input.display(), output.display());
    crate::convert::run(crate::convert::Args {
        input,
        output: output.clone(),
        out_type: tern_converters::OutputType::Ternary(tern_formats::Layout::I2S),
        embed_type: "f16".into(),
        force: true,
        allow_output_in_input: false,
        json: false,
        quiet: false,
    })?;
    println!("\n== tern inspect {}", output.display());
    crate::inspect::run(crate::inspect::Args { file: output, json: false, full: false })
}
