#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine with the Rust toolchain, then runs
# every check and test: formatting, clippy, unit tests and the integration tests (which start
# the embedded broker on free loopback ports).
#
#   scripts/test.sh            # everything
#   scripts/test.sh cli        # extra arguments go to `cargo test` (here: one test target)
#
# Cargo's build output goes to $CARGO_TARGET_DIR (default ~/.cache/quakestream/target), outside
# the checkout, so repeated runs and fresh clones reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quakestream/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: a C toolchain and headers for librdkafka (built from source by the rdkafka
# crate, linked to the system OpenSSL and zlib) and SQLite (built by libsql); the PostgreSQL
# server the warehouse tests start (privately, on a free port); Python's venv for the test
# helpers below; npm, through which build.rs bundles the map's front-end libraries from
# web/package-lock.json; Chromium, which the dashboard test drives headless; kcat, which
# tests/kcat.rs runs against the embedded broker; openssl, which makes the certificates of the
# PostgreSQL TLS test.
packages=(build-essential pkg-config libssl-dev zlib1g-dev perl make postgresql python3-venv chromium kcat openssl)
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# Any npm will do (a Node.js from elsewhere brings its own, and conflicts with Debian's).
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Python tools the tests drive: DuckDB reads the Parquet lake, moto's server mode stands in for
# S3. In a virtual environment of their own, so the system's Python is left alone.
venv="${QS_VENV:-$HOME/.cache/quakestream/venv}"
if ! "$venv/bin/python" -c 'import duckdb, moto, flask_cors' >/dev/null 2>&1; then
  step "installing Python test tools (duckdb, moto[server]) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q duckdb 'moto[server]'
fi
export QS_PYTHON="$venv/bin/python"
export QS_MOTO_SERVER="$venv/bin/moto_server"

# No incremental compilation state: it grows by gigabytes per edit and a test run gains
# nothing from it.
export CARGO_INCREMENTAL=0

# Formatting and lints are part of the test: a machine without rustfmt or clippy gets them from
# rustup, and one where that is impossible fails here instead of passing unchecked.
for tool in rustfmt clippy; do
  if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      step "installing $tool with rustup"
      rustup component add "$tool"
    fi
    if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1; then
      echo "error: $tool is not installed and rustup could not add it; install it (rustup component add $tool)" >&2
      exit 1
    fi
  fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

step "cargo test"
cargo test --locked "$@"
