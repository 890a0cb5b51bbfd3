#!/bin/sh
# Runs the interposer, emulation and fork tests against the interposer built
# with AddressSanitizer and UBSan (P11TLS_INTERPOSER_SANITIZE=1: a build of its
# own in the cache). Every process of the run gets libasan preloaded, since the
# clients (python, the drivers) are not built with it. Extra arguments go to
# pytest, e.g. -k fork, or --basetemp DIR.
#
#   scripts/sanitize-interposer.sh [PYTEST-ARGS...]
set -eu
cd "$(dirname "$0")/.."
cc=${CC:-cc}
asan=$("$cc" -print-file-name=libasan.so 2>/dev/null || true)
if [ ! -f "$asan" ]; then
    echo "sanitize-interposer: libasan.so not found by $cc (install gcc's libasan, e.g. libasan8)" >&2
    exit 2
fi
# libstdc++ too: with libasan preloaded into a C program (python) that later
# loads a C++ module (SoftHSM), ASan's __cxa_throw interceptor finds no target.
cxx=$("$cc" -print-file-name=libstdc++.so.6 2>/dev/null || true)
[ -f "$cxx" ] && asan="$asan $cxx"
python=${PYTHON:-.venv/bin/python}
export P11TLS_INTERPOSER_SANITIZE=1
# Leaks: python itself holds memory at exit. Any other report ends the process.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
LD_PRELOAD="$asan" exec "$python" -m pytest -p no:cacheprovider \
    tests/interposer/test_interposer.py tests/interposer/test_emulation.py tests/interposer/test_fork.py "$@"
