#!/usr/bin/env bash
# Run the whole suite: everything under the server's Python 3.9, then the MindSpore-free tests (marker `pure`)
# again under Python 3.11, where clients and the text pipeline must also work.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
status=0
# Tools some tests drive from Debian's packages (the page's browser test: chromium + its driver). Installed here,
# not by setup.sh, because serving does not need them; tests that need a missing one skip and say why.
TEST_PACKAGES=(chromium chromium-driver)
missing=()
for pkg in "${TEST_PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing test tools: ${missing[*]}"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o DPkg::Lock::Timeout=300 "${missing[@]}"; } >/dev/null || echo "== could not install ${missing[*]}: their tests skip"
    else
        echo "== ${missing[*]} not installed (needs root and apt-get): their tests skip"
    fi
fi
echo "== tests under Python 3.9 (server venv)"
.stack/py39/bin/python -m pytest "$@" || status=$?
if [ "${BERT_SQUAD_SKIP_PY311:-0}" != 1 ]; then
    echo "== MindSpore-free tests under Python 3.11"
    .stack/py311/bin/python -m pytest -m pure "$@" || status=$?
fi
exit $status
