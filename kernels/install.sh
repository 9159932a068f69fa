#!/usr/bin/env bash
# Installs the "jip" kernelspec into a virtual environment (default: this repository's
# .venv), as <venv>/share/jupyter/kernels/jip, with argv[0] the venv's own python.  The
# site runner looks kernels up there only, so no user-level kernelspec can stand in.
# Idempotent: re-running rewrites the same file.  Usage: kernels/install.sh [VENV]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$(cd "${1:-$here/../.venv}" && pwd)
python="$venv/bin/python"
[ -x "$python" ] || { echo "kernels/install.sh: no python at $python" >&2; exit 2; }
"$python" -c "import ipykernel_launcher" 2>/dev/null || {
  echo "kernels/install.sh: ipykernel is not installed in $venv" >&2; exit 2; }
for spec in "$here"/*/kernel.json; do
  name=$(basename "$(dirname "$spec")")
  dest="$venv/share/jupyter/kernels/$name"
  mkdir -p "$dest"
  tmp=$(mktemp "$dest/.kernel.json.XXXXXX")
  sed "s|@VENV_PYTHON@|$python|g" "$spec" > "$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$dest/kernel.json"
  printf '[jip install] kernel %s -> %s\n' "$name" "$dest" >&2
done
