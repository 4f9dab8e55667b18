# Shared set-up for scripts/run, scripts/test and scripts/dashboard: finds a Python >= 3.12
# (preferring 3.13), creates .venv when missing and (re)installs the project when
# pyproject.toml changed. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

find_python() {
  local candidates=(python3.13 python3.12)
  local dir
  for dir in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13* "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*; do
    [ -x "$dir/bin/python3" ] && candidates+=("$dir/bin/python3")
  done
  candidates+=(python3 python)
  local py
  for py in "${candidates[@]}"; do
    if command -v "$py" >/dev/null 2>&1 \
      && "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  return 1
}

ensure_venv() {
  local stamp="$VENV/.mitmflare-installed"
  if [ ! -x "$VENV/bin/python" ]; then
    local py
    py="$(find_python)" || { echo "mitmflare needs Python >= 3.12 (python3.13, python3.12 or a pyenv version)" >&2; exit 1; }
    echo "Creating $VENV with $py ($("$py" --version))" >&2
    "$py" -m venv "$VENV"
  fi
  local want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | cksum)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing mitmflare and its test tools into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    # (this machine's pip config lists local index folders that may not exist: hide that noise)
    # the tested versions (constraints.txt); pyproject.toml holds the lowest ones allowed
    "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[test]" \
      2> >(grep -v "is ignored: it is neither" >&2)
    echo "$want" > "$stamp"
  fi
}

# Installs an npm package into .tools/ (gitignored) when npm is on PATH and it is missing
# there; never fails: without npm or the registry, the tests that need it say why they skip.
ensure_npm_package() {
  local package="$1"
  command -v npm >/dev/null 2>&1 || return 0
  [ -d "$ROOT/.tools/node_modules/$package" ] && return 0
  echo "Installing $package into $ROOT/.tools (npm)" >&2
  timeout 300 npm install --silent --no-audit --no-fund --prefix "$ROOT/.tools" "$package" \
    >/dev/null 2>&1 || echo "could not install $package; tests that need it will skip" >&2
}
