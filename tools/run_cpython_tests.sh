#!/usr/bin/env bash
# CPython's own manager tests (the manager flavour of test._test_multiprocessing,
# from the `test` package installed with this Python) with fastmgr swapped in
# through fastmgr.install(), under fork, spawn and forkserver; and the same
# tests on the stdlib, as the baseline on this machine.
#
# Run it where fastmgr is installed (not editable): .ci/run calls it inside its
# venv.  Exits non-zero if a test fails under fastmgr.
#
#   tools/run_cpython_tests.sh [driver options]    e.g. --impl fastmgr --start-method spawn
#
# CPYTHON_TESTS_JSON=FILE also writes the counts as JSON.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"

if ! "$python" -c "import test._test_multiprocessing" >/dev/null 2>&1; then
  echo "run_cpython_tests: this Python has no test._test_multiprocessing" >&2
  echo "(install its test package, e.g. python3.X-test / libpython3.X-testsuite)" >&2
  exit 1
fi

args=(--impl both --require-installed)
if [ -n "${CPYTHON_TESTS_JSON:-}" ]; then
  args+=(--json "$CPYTHON_TESTS_JSON")
fi

# from a scratch directory, so that the source tree is not importable
scratch="$(mktemp -d "${TMPDIR:-/tmp}/fastmgr-cpython-tests.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"
start=$(date +%s)
status=0
"$python" "$here/cpython_manager_tests.py" "${args[@]}" "$@" || status=$?
echo "run_cpython_tests: $(( $(date +%s) - start ))s wall"
exit "$status"
