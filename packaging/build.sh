#!/usr/bin/env bash
# Build the onedir bundle dist/prunescope/ (the app, its weights, resources and Qt plugins) from the
# Python environment PruneScope is installed in:  pip install -e ".[build]" && bash packaging/build.sh
# PYTHON=/path/to/python picks another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}

if ! "$python" -c "import PyInstaller" 2>/dev/null; then
    echo "build.sh: PyInstaller is missing; install it with: pip install -e \".[build]\"" >&2
    exit 1
fi

rm -rf build/prunescope dist/prunescope  # stale trees would mix old files into the bundle
start=$(date +%s)
"$python" -m PyInstaller --noconfirm --clean --log-level "${PYINSTALLER_LOG_LEVEL:-WARN}" \
    --distpath dist --workpath build packaging/prunescope.spec
cp packaging/install-desktop.sh dist/prunescope/
echo "built dist/prunescope in $(( $(date +%s) - start )) s ($(du -sh dist/prunescope | cut -f1))"
