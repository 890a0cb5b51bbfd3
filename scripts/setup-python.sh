#!/usr/bin/env bash
# Creates .venv with the harness installed in editable mode; reinstalls only
# when pyproject.toml changed since the last install.
set -euo pipefail
venv=${VENV:-.venv}
stamp="$venv/.p11tls-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "setup: installing the Python environment in $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e '.[test]'
echo "$want" > "$stamp"
