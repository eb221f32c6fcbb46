#!/usr/bin/env bash
# Sourced by the other scripts: installs the Debian packages they need that are missing, with one
# `apt-get update` at most. Usage: ensure_packages pkg...
ensure_packages() {
  local sudo="" missing=() p
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
# What building and running the signer needs.
BUILD_PACKAGES=(softhsm2 opensc libclang-dev protobuf-compiler libusb-1.0-0-dev pkg-config)
