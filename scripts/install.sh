#!/usr/bin/env bash
# Installs stird into ./.venv and puts the `stird` command on PATH (/usr/local/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import ensurepip, venv' 2>/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip
}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e .
if [ -w /usr/local/bin ]; then ln -sf "$PWD/.venv/bin/stird" /usr/local/bin/stird; fi
.venv/bin/stird --help
