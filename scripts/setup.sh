#!/usr/bin/env bash
# Installs the system packages ChorusFS needs to build and mount (Debian/Ubuntu, as root).
set -euo pipefail
pkgs=(libclang-dev clang fuse3)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: load the fuse module (modprobe fuse)"; exit 1; }
echo "setup: system packages present"
