//! The `tern` command: parses arguments, calls the libraries, prints. No model logic lives here.
//!
//! Exit codes: 0 success, 1 a check failed (verification), 2 an error (bad input, I/O).

mod bench;
mod chat;
mod common;
mod convert;
mod inspect;
mod logits;
mod perplexity;
mod quickstart;
mod run;
mod serve;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Convert, inspect and run ternary (BitNet b1.58) language models",
    long_about = "tern converts Hugging Face BitNet b1.58 checkpoints (bf16 master weights or the packed \
uint8 form) into GGUF files in bitnet.cpp's layouts, checks them against an f32 reference forward \
pass, and runs them on the CPU.\n\n\
Start with `tern quickstart`, which converts the bundled demo model (a small BitNet b1.58 trained on \
Jane Austen and Moby-Dick), verifies it, measures its perplexity and generates text.\n\n\
Exit codes: 0 success, 1 a verification failed, 2 an error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Convert(convert::Args),
    Inspect(inspect::Args),
    Verify(verify::Args),
    Run(run::Args),
    Chat(chat::Args),
    Bench(bench::Args),
    Logits(logits::Args),
    Perplexity(perplexity::Args),
    Serve(serve::Args),
    Quickstart(quickstart::Args),
}

/// Writes command output to stdout; a closed pipe (`tern inspect x | head`) is not an error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Ctrl-C and SIGTERM: remove any temporary output, say so, exit 130. A process past its
/// file-size limit gets EFBIG from `write` (reported like a full disk) instead of SIGXFSZ.
fn install_signal_handlers(exit_on_interrupt: bool) {
    let handler = || {
        for path in tern_converters::output::remove_temp_files() {
            eprintln!("interrupted: removed {}", path.display());
        }
        eprintln!("interrupted");
        std::process::exit(130);
    };
    if !exit_on_interrupt {
    } else if let Err(e) = ctrlc::set_handler(handler) {
        eprintln!(
            "warning: cannot install the Ctrl-C handler ({e}); an interrupted conversion may leave a temporary file"
        );
    }
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// The forward pass allocates a few MB per matmul of a prompt (integer sums, outputs). glibc
/// serves blocks above its mmap threshold with fresh mappings, so every prompt matmul paid page
/// faults and zeroing. Keeping such blocks in the heap for reuse avoids both at the same peak
/// RSS (docs/performance-notes.md, "Allocator").
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // The server stops gracefully on SIGTERM / Ctrl-C itself; every other command exits at once.
    install_signal_handlers(!matches!(cli.command, Command::Serve(_)));
    let result = match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quickstart(a) => quickstart::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<common::CheckFailed>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message already
/// holds (library errors name the file and quote the OS error, which is also their source), so
/// "x.gguf: No such file or directory (os error 2)" is not followed by the same reason again.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text += ": ";
            text += &cause;
        }
    }
    text
}
