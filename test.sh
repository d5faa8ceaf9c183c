#!/usr/bin/env bash
# Runs the whole PromptMQ test suite: unit, integration, end-to-end, crash and doc tests of
# every crate, then the loom model of the WAL's group-commit queue.
# Environment: WAL_CRASH_CYCLES (default 20) sets the kill -9 cycles of the WAL crash test.
set -euo pipefail
cd "$(dirname "$0")"

cargo test --workspace --all-targets
cargo test --workspace --doc

# The same WAL suite on the io_uring backend (it falls back to the portable one, with a
# warning, where the kernel refuses io_uring).
cargo test -p promptmq-wal --features io-uring

# loom swaps the WAL's locks for model-checked ones; only the wal crate's lib is built that
# way, in its own target dir so the normal build is not invalidated.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p promptmq-wal --lib --release loom
