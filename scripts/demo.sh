#!/usr/bin/env bash
# Custody demo: builds the signer, then puts an identity, TLS and seal key
# into a fresh SoftHSM2 token and into a fresh keystore file, and self-tests both with `keys check`.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/packages.sh
ensure_packages "${BUILD_PACKAGES[@]}"

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
