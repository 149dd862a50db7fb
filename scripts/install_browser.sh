#!/usr/bin/env bash
# Install headless Chromium and its WebDriver (Debian packages `chromium`, `chromium-driver`) for the
# browser check of the MLflow UI (tests/test_ui.py, `pytest -m ui`). Idempotent: does nothing when
# /usr/bin/chromium and /usr/bin/chromedriver are already there. Needs root (or sudo) and apt.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$DRIVER" ]]; then
    echo "install_browser: chromium and chromedriver already installed ($("$CHROMIUM" --version 2>/dev/null || echo '?'))"
    exit 0
fi

fail() {
    echo "install_browser: ERROR: $*" >&2
    echo "install_browser: install them by hand with: apt-get update && apt-get install -y chromium chromium-driver" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: this script supports Debian/Ubuntu only"

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || fail "not root and sudo is not available"
    SUDO="sudo -n"
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_browser: installing chromium and chromium-driver via apt ..."
$SUDO apt-get update -qq >/dev/null || fail "apt-get update failed"
# fonts-liberation: Chromium's recommended fonts (without them pages render in whatever font is there)
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null \
    || fail "apt-get install chromium chromium-driver failed"

[[ -x "$CHROMIUM" ]] || fail "$CHROMIUM is still missing after apt-get install"
[[ -x "$DRIVER" ]] || fail "$DRIVER is still missing after apt-get install"
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium) and $("$DRIVER" --version 2>/dev/null | head -n1 || echo chromedriver)"
