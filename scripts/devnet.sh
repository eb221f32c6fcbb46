#!/usr/bin/env bash
# The main job: a local devnet of signers. Installs the same apt packages as scripts/demo.sh,
# builds the signer, then runs `sbtc-hsm-signer devnet` (5 signers, threshold 4, a demo batch of
# 20 sighashes; each signer a separate process with its own encrypted keystore, talking over mTLS
# on 127.0.0.1). Extra arguments go to `devnet`, e.g. `--signers 7 --threshold 5 --batch 100`.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PACKAGES=(softhsm2 opensc libclang-dev protobuf-compiler libusb-1.0-0-dev pkg-config)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

exec cargo run --release --quiet --bin sbtc-hsm-signer -- devnet "$@"
