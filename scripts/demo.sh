#!/usr/bin/env bash
# The main job until the devnet lands: builds the signer, then puts an identity, TLS and seal key
# into a fresh SoftHSM2 token and into a fresh keystore file, and self-tests both with `keys check`.
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

cargo build --release --quiet
BIN="$PWD/target/release/sbtc-hsm-signer"
WORK="$(mktemp -d -t sbtc-hsm-signer-demo.XXXXXX)"
echo "==> working in $WORK"

# SoftHSM2 token with its own token dir.
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\n' "$WORK" > "$WORK/softhsm2.conf"
export SOFTHSM2_CONF="$WORK/softhsm2.conf"
softhsm2-util --init-token --free --label demo-signer --pin 11223344 --so-pin 55667788 >/dev/null
(umask 077; echo 11223344 > "$WORK/pin"; head -c 24 /dev/urandom | base64 > "$WORK/passphrase")
cat > "$WORK/softhsm.toml" <<TOML
[custody]
backend = "pkcs11"
[custody.pkcs11]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "demo-signer"
pin_file = "$WORK/pin"
TOML
cat > "$WORK/keystore.toml" <<TOML
[custody]
backend = "keystore"
[custody.keystore]
path = "$WORK/keystore"
passphrase_file = "$WORK/passphrase"
TOML

for cfg in softhsm keystore; do
  echo "==> $cfg"
  "$BIN" --config "$WORK/$cfg.toml" keys init
  for role in identity tls seal; do
    "$BIN" --config "$WORK/$cfg.toml" keys generate --role "$role"
  done
  "$BIN" --config "$WORK/$cfg.toml" keys check
done
echo "==> done; configs, token and keystore are in $WORK"
