#!/usr/bin/env bash
# Installs the headless browser the UI end-to-end test drives: Debian's `chromium` and
# `chromium-driver`. Idempotent: does nothing when both are already on PATH (or at
# GLASSBOX_CHROMIUM / GLASSBOX_CHROMEDRIVER). Needs root (or sudo) and Debian's apt sources;
# on a machine without apt it says what to install and exits 0, so the test then skips.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

browser="${GLASSBOX_CHROMIUM:-chromium}"
driver="${GLASSBOX_CHROMEDRIVER:-chromedriver}"
if have "$browser" && have "$driver"; then
    exit 0
fi

if ! have apt-get; then
    echo "install-browser: apt-get not found; install chromium and chromedriver yourself" \
        "(the UI end-to-end test skips without them)" >&2
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then
        sudo="sudo"
    else
        echo "install-browser: not root and no sudo; install chromium and chromium-driver" \
            "yourself (the UI end-to-end test skips without them)" >&2
        exit 0
    fi
fi

echo "install-browser: installing chromium and chromium-driver with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
have chromium && have chromedriver
echo "install-browser: $(chromium --version 2>/dev/null || echo chromium), $(chromedriver --version 2>/dev/null | head -1)" >&2
