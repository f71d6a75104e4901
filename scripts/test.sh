#!/usr/bin/env bash
# Run the whole suite: everything under the server's Python 3.9, then the MindSpore-free tests (marker `pure`)
# again under Python 3.11, where clients and the text pipeline must also work.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
status=0
echo "== tests under Python 3.9 (server venv)"
.stack/py39/bin/python -m pytest "$@" || status=$?
if [ "${BERT_SQUAD_SKIP_PY311:-0}" != 1 ]; then
    echo "== MindSpore-free tests under Python 3.11"
    .stack/py311/bin/python -m pytest -m pure "$@" || status=$?
fi
exit $status
