#!/usr/bin/env bash
# Set up the Python baseline (torch + transformers + lime + shap + captum) in a virtual
# environment outside the repository, at
#   ${GLASSBOX_BASELINE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/glassbox-baseline-venv}
# Idempotent: if that venv already imports every package, nothing is installed.
# The packages come from the package index pip is configured with (PyPI's torch wheel as is;
# it is large, expect several minutes and a few GB on first run).
# Prints the venv's python path as the last line of stdout.
set -euo pipefail

VENV="${GLASSBOX_BASELINE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/glassbox-baseline-venv}"
PY="${PYTHON:-python3}"
PACKAGES=(torch transformers lime shap captum scikit-learn numpy threadpoolctl)
IMPORTS="import torch, transformers, lime, shap, captum, sklearn, numpy, threadpoolctl"

log() { printf 'setup-baseline: %s\n' "$*" >&2; }
die() { printf 'setup-baseline: ERROR: %s\n' "$*" >&2; exit 1; }

ready() { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "$IMPORTS" >/dev/null 2>&1; }

report_versions() {
    "$VENV/bin/python" - <<'PYEOF' >&2
from importlib.metadata import version
for dist in ("torch", "transformers", "lime", "shap", "captum", "scikit-learn", "numpy", "threadpoolctl"):
    print(f"setup-baseline:   {dist} {version(dist)}")
PYEOF
}

if ready; then
    log "baseline venv $VENV already has all packages; nothing to do"
    report_versions
    echo "$VENV/bin/python"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found"
    log "creating venv $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || die "'$PY -m venv $VENV' failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi

log "installing ${PACKAGES[*]} into $VENV (large download on first run) ..."
"$VENV/bin/python" -m pip install --disable-pip-version-check "${PACKAGES[@]}" \
    || die "pip install into $VENV failed (see pip's output above)"

if ! "$VENV/bin/python" -c "$IMPORTS"; then
    die "packages were installed but '$IMPORTS' still fails in $VENV"
fi
log "baseline venv ready:"
report_versions
echo "$VENV/bin/python"
