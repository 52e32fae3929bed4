#!/usr/bin/env bash
# Runs one example offline: starts the replay server on the recorded responses it needs, then
# `quakestream up` with the example's config pointed at it. Ctrl+C stops both.
#
#   examples/run.sh course | warehouse | apod-s3 | randomuser-files | turnstile
#
# QUAKESTREAM (the binary) defaults to target/release/quakestream, built if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: examples/run.sh course|warehouse|apod-s3|randomuser-files|turnstile}"
shift
config="examples/$name.toml"
[ -f "$config" ] || { echo "no example $name ($config)" >&2; exit 2; }

bin="${QUAKESTREAM:-target/release/quakestream}"
if [ ! -x "$bin" ]; then
  cargo build --release
  bin="${CARGO_TARGET_DIR:-target}/release/quakestream"
fi

port="${REPLAY_PORT:-8090}"
replay() {
  "$bin" replay-server --dir "$1" --listen "127.0.0.1:$port" &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
}

case "$name" in
  course | warehouse)
    replay fixtures/usgs/revision_sequence_2025-05-04
    set -- --usgs-url "http://127.0.0.1:$port/all_day.geojson" --interval 5s "$@" ;;
  apod-s3)
    replay fixtures/apod
    set -- --http-url "nasa-apod=http://127.0.0.1:$port/planetary/apod" "$@" ;;
  randomuser-files)
    replay fixtures/randomuser
    set -- --http-url "randomuser=http://127.0.0.1:$port/api/" "$@" ;;
  turnstile) ;;
  *) echo "unknown example $name" >&2; exit 2 ;;
esac
"$bin" --config "$config" --data-dir "${DATA_DIR:-data/$name}" up "$@"
