#!/usr/bin/env bash
# Run the benchmark: creates bench/.venv on first use, installs lmq from this checkout
# (editable) plus bench/requirements.txt from PyPI, then runs bench.py with the arguments.
#   bench/run.sh --quick
#   bench/run.sh --out docs/benchmarks.md
#   bench/run.sh --backend postgresql --docs docs/benchmarks.md   (see --help)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$here/requirements.txt" -nt "$stamp" ] \
        || [ "$here/../pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$here/..[postgres,mysql,redis]" \
        -r "$here/requirements.txt"
    touch "$stamp"
fi
export BENCH_CMD="bench/run.sh${*:+ $*}"
exec "$venv/bin/python" "$here/bench.py" "$@"
