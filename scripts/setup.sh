#!/usr/bin/env bash
# Set-up for `make image` / `make test`: install the Debian packages listed in
# scripts/debian-packages.txt that are missing, then `npm ci` (which also compiles the CLI).
# Checks with dpkg first; runs `apt-get update` only when something must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

list=scripts/debian-packages.txt
mapfile -t wanted < <(grep -v '^[[:space:]]*#' "$list" | awk 'NF { print $1 }' | sort -u)
# Extra packages that only the tests need (reference tools to compare against), one per argument.
wanted+=("$@")

missing=()
for pkg in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
  echo "setup: missing Debian packages: ${missing[*]}"
  for pkg in "${missing[@]}"; do
    why=$(awk -v p="$pkg" '!/^[[:space:]]*#/ && $1 == p { $1=""; $2=""; sub(/^ +/, ""); print; exit }' "$list")
    echo "setup:   $pkg — ${why:-needed by the tests}"
  done
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: not root; install them with:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#wanted[@]} Debian packages present"
fi

# npm ci is the slow part of a no-op set-up: skip it when node_modules matches the lockfile.
stamp=node_modules/.domu-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup: node_modules up to date with package-lock.json"
  npm run -s build
else
  npm ci --no-audit --no-fund
  echo "$want" > "$stamp"
fi
