#!/usr/bin/env bash
# Installs everything JIP needs on a Debian machine with Python 3.11, idempotently:
# Debian packages (Orthanc with DICOMweb, dcmtk, Chromium, bubblewrap for the kernel
# sandbox; npm and Python 3.11 where missing), npm packages, a virtual environment in
# .venv with jipkit and its extras, and the site's JIP kernel.  Re-running it is cheap:
# each step is skipped when what it installs is already there and unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf '[jip install] %s\n' "$*" >&2; }

# 1. Debian packages ------------------------------------------------------------
apt_pkgs=(orthanc orthanc-dicomweb dcmtk chromium bubblewrap)
command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
if ! python3.11 -c "import ensurepip, venv" >/dev/null 2>&1; then
  apt_pkgs+=(python3.11 python3.11-venv)   # Debian 12's Python, with venv and ensurepip
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package starts no service here (no systemd); JIP starts its own Orthanc.
fi

# 2. npm packages (configurable-http-proxy for the site hub) --------------------
if [ ! -x hub/node_modules/.bin/configurable-http-proxy ]; then
  log "npm install (hub/)"
  npm install --prefix hub --no-audit --no-fund --silent >/dev/null
fi

# 3. Python virtual environment ------------------------------------------------
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null 2>&1 || py=python3
stamp=.venv/.jip-install-stamp
want=$(cat pyproject.toml deploy/install.sh | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $py"
  "$py" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pip install (torch 2.13.0 first: a CPU wheel; the requirement itself is a range)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[all]"
  echo "$want" > "$stamp"
fi
# 4. The site's JIP kernel (kernels/jip), registered inside the venv ----------------
bash kernels/install.sh .venv >/dev/null
log "ready: $root/.venv"
