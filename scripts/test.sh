#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: system packages, a private SoftHSM2 token dir, a
# private PostgreSQL server (127.0.0.1 only, stopped at the end), then fmt, clippy and every test:
# the custody conformance suite on SoftHSM2 and the storage suite on the real server included.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/packages.sh
# Node.js 18+ (global fetch) for the sBTC wallet library tests: Debian's unless one is installed.
# One ensure_packages call, so at most one `apt-get update`.
NODE_PACKAGES=()
command -v npm >/dev/null || NODE_PACKAGES=(nodejs npm)
ensure_packages "${BUILD_PACKAGES[@]}" postgresql "${NODE_PACKAGES[@]}"

# A private SoftHSM2 token dir for this run; tests that need their own tokens make their own too.
WORK="$(mktemp -d -t sbtc-hsm-signer-test.XXXXXX)"
# The postgres user must reach the data dir, so it lives outside the root-only $WORK.
export SBTC_PG_DIR="/tmp/sbtc-hsm-signer-pg-$$"
cleanup() {
  scripts/pg.sh destroy >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK" > "$WORK/softhsm2.conf"
export SOFTHSM2_CONF="$WORK/softhsm2.conf"

# Everything the tests need is installed and started here: a test that finds PostgreSQL or
# SoftHSM2 missing fails instead of skipping.
export SBTC_TEST_REQUIRE=1

echo "==> starting a private PostgreSQL server"
PG_ENV="$(scripts/pg.sh start)" || { echo "test.sh: PostgreSQL did not start" >&2; exit 1; }
eval "$PG_ENV"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# The official sBTC wallet library (package-lock.json pins it) for tests/deposit_api.rs.
echo "==> npm ci"
npm ci --no-audit --no-fund
echo "==> cargo test"
cargo test --workspace
