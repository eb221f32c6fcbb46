#!/usr/bin/env bash
# The main job: a local devnet of signers. Installs the apt packages it needs,
# builds the signer, then runs `sbtc-hsm-signer devnet` (5 signers, threshold 4, a demo batch of
# 20 sighashes; each signer a separate process with its own encrypted keystore, talking over mTLS
# on 127.0.0.1). Extra arguments go to `devnet`, e.g. `--signers 7 --threshold 5 --batch 100`.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/packages.sh
ensure_packages "${BUILD_PACKAGES[@]}"

exec cargo run --release --quiet --bin sbtc-hsm-signer -- devnet "$@"
