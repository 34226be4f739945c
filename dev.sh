#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv with CPU PyTorch and the project, then runs
#   ./dev.sh demo   the local demo (coordinator + volunteers training on the embedded corpus)
#   ./dev.sh test   the test suite
#   ./dev.sh lint   ruff, mypy and the layer contracts (lint-imports)
#   ./dev.sh lowest the fast unit tests against the lowest dependency versions pyproject.toml allows
# Extra arguments are passed on to the command.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${COMMONWEIGHTS_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0

# A venv at $1 with torch installed. Torch first and pinned: an unpinned torch in a fresh
# environment resolves to a CUDA build several GB large. Set TORCH_INDEX_URL to a CPU wheel index
# where no local wheel is configured.
venv_with_torch() {
    local venv=$1
    if [ ! -x "$venv/bin/python" ]; then
        "$PY" -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
        local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            "${pip[@]}" "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
        else
            "${pip[@]}" "torch==$TORCH_VERSION"
        fi
    fi
}

setup() {
    venv_with_torch "$VENV"
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    local extras=${1:-}
    local stamp="$VENV/.commonweights-${extras//,/-}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "${pip[@]}" -e ".${extras:+[$extras]}"
        touch "$stamp"
    fi
}

cmd=${1:-demo}
shift || true
case "$cmd" in
    demo)
        setup ""
        exec "$VENV/bin/commonweights" demo "$@"
        ;;
    test)
        setup dev,gui
        if [ $# -gt 0 ]; then
            exec "$VENV/bin/python" -m pytest "$@"
        fi
        # The Qt tests run in a pytest process of their own: in one process with the rest of the
        # suite (Playwright's greenlets, torch's thread pools) Qt crashed natively once, in a test
        # that passes on its own and with its group.
        "$VENV/bin/python" -m pytest --ignore=tests/volunteer_app/tray
        exec "$VENV/bin/python" -m pytest tests/volunteer_app/tray
        ;;
    lint)
        setup dev,gui
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        "$VENV/bin/mypy"
        exec "$VENV/bin/lint-imports" --no-cache
        ;;
    lowest)
        # Each direct dependency at the lowest version pyproject.toml allows (transitive ones
        # resolve as usual), in a venv of its own: the floors there are claims this checks. torch
        # is the exception, pinned to TORCH_VERSION like everywhere (never a CUDA download).
        # Without arguments: the fast unit tests (no GUI, browser or slow ones).
        lowest=${COMMONWEIGHTS_LOWEST_VENV:-.venv-lowest}
        venv_with_torch "$lowest"
        "$lowest/bin/python" .ci/lowest_constraints.py pyproject.toml "$TORCH_VERSION" >"$lowest/constraints.txt"
        if [ ! -f "$lowest/.installed" ] || ! cmp -s "$lowest/constraints.txt" "$lowest/.installed"; then
            "$lowest/bin/python" -m pip install --quiet --disable-pip-version-check -c "$lowest/constraints.txt" \
                -e ".[test]"
            cp "$lowest/constraints.txt" "$lowest/.installed"
        fi
        if [ $# -gt 0 ]; then
            exec "$lowest/bin/python" -m pytest "$@"
        fi
        exec "$lowest/bin/python" -m pytest -m "not slow and not gpu" tests/protocol tests/training \
            tests/coordinator tests/volunteer_app tests/test_version.py --ignore=tests/volunteer_app/tray \
            --ignore=tests/training/test_simulate.py
        ;;
    *)
        echo "usage: ./dev.sh [demo|test|lint|lowest] [args...]" >&2
        exit 2
        ;;
esac
