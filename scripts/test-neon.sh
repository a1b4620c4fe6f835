#!/usr/bin/env bash
# Runs the kernel tests (every NEON kernel against its scalar twin) on aarch64 under qemu user
# emulation, so the ARM paths are executed, not only compiled, on x86 machines. Needs the
# aarch64 Rust target, a cross linker and qemu (Debian: gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross, qemu-user-static); installs them when it can. Exit 3: tools missing.
set -euo pipefail
cd "$(dirname "$0")/.."
have_tools() { command -v qemu-aarch64-static >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null; }
if ! have_tools; then
  pkgs="qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo -n"
  { $sudo_ apt-get install -y -qq $pkgs || { $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq $pkgs; }; } \
    >/dev/null 2>&1 || true
fi
if ! have_tools || ! rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1; then
  echo "NOTICE: aarch64 cross tools or qemu unavailable; NEON kernels not executed" >&2
  exit 3
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
cargo test --profile neon-test -p tern-runtime --target aarch64-unknown-linux-gnu --lib kernels
