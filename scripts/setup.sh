#!/usr/bin/env bash
# Set up mer on a Debian machine: the Debian packages it needs (ffmpeg), a virtual environment in
# .venv, torch, mer itself (editable, with its test extras) and, for the tests that open `mer report`
# pages in a browser, headless Chromium (a failure there is only a warning: those tests are then
# skipped). Safe to run again: what is already in place is kept. Works as root or, for apt-get,
# through sudo.
#
# torch: the CPU build torch==2.13.0 (an unpinned torch pulls a CUDA build of several GB); on a
# machine where nvidia-smi works, the default (CUDA) build instead.
# PYTHON selects the interpreter for the environment (default: python3, version 3.10 or newer).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CPU_TORCH="torch==2.13.0"

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root to run: $* (run this script as root, or install sudo)"
        exit 1
    fi
}

missing_debian_packages() {
    local missing=()
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)  # Debian ships venv's pip bootstrap separately
    fi
    echo "${missing[*]}"
}

install_debian_packages() {
    local packages
    packages=$(missing_debian_packages)
    if [ -z "$packages" ]; then
        log "Debian packages: already installed"
        return
    fi
    log "Debian packages: installing $packages"
    as_root apt-get update
    # shellcheck disable=SC2086  # the list is meant to split into words
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages
}

create_environment() {
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        log "$PYTHON is $("$PYTHON" -V 2>&1); mer needs Python 3.10 or newer (set PYTHON=...)"
        exit 1
    fi
    if [ -x .venv/bin/python ]; then
        log "virtual environment: .venv already exists"
    else
        log "virtual environment: creating .venv with $("$PYTHON" -V 2>&1)"
        "$PYTHON" -m venv .venv
    fi
}

install_torch() {
    local requirement=$CPU_TORCH
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        requirement=torch
        log "torch: NVIDIA GPU found, installing the default (CUDA) build"
    else
        log "torch: no NVIDIA GPU, installing the CPU build $CPU_TORCH"
    fi
    .venv/bin/python -m pip install "$requirement"
}

install_test_browser() {
    if command -v chromium >/dev/null 2>&1; then
        log "chromium (report tests): already installed"
        return
    fi
    log "chromium (report tests): installing"
    # In a subshell, so that as_root's exit (no root, no sudo) ends only this step.
    if ! (as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends chromium fonts-dejavu-core); then
        log "chromium could not be installed: the tests that open reports in a browser will be skipped"
    fi
}

install_debian_packages
create_environment
install_torch  # before mer, so that mer's own 'torch>=...' is already satisfied by this build
log "mer: installing the project (editable) with its test extras"
.venv/bin/python -m pip install -e '.[test]'
install_test_browser
log "done: .venv/bin/mer doctor checks the result"
