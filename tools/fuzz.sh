#!/usr/bin/env bash
# Run the atheris fuzzers of tests/fuzz/ for a bounded time each, on both wire
# implementations at once (they must agree) and, with --each, on each alone.
#
#   tools/fuzz.sh                 # 20 s per harness (what CI runs)
#   tools/fuzz.sh --long          # one hour per harness
#   tools/fuzz.sh --seconds 300   # any other bound
#   tools/fuzz.sh --each          # also compiled-only and python-only runs
#
# New inputs go to a scratch folder; crashing inputs are written to
# $FUZZ_OUT (default: a temporary folder) as crash-*.  Keep a crash as a
# regression case: copy it to tests/fuzz/corpus/<harness>/regress-<what>.
# Exits non-zero if any run found a crash.  Needs atheris (pip install atheris).
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=20
impls=(both)
while [ $# -gt 0 ]; do
  case "$1" in
    --long) seconds=3600 ;;
    --seconds) seconds=$2; shift ;;
    --each) impls=(both compiled python) ;;
    *) echo "usage: $0 [--long | --seconds N] [--each]" >&2; exit 2 ;;
  esac
  shift
done

python=${PYTHON:-python}
if ! "$python" -c "import atheris" 2>/dev/null; then
  echo "fuzz.sh: atheris is not installed for $python (pip install atheris)" >&2
  exit 2
fi
out=${FUZZ_OUT:-$(mktemp -d -t fastmgr-fuzz.XXXXXX)}
mkdir -p "$out"
status=0
for harness in decoder handshake; do
  for impl in "${impls[@]}"; do
    work="$out/$harness-$impl"
    mkdir -p "$work/corpus"
    log="$work/log.txt"
    "$python" "tests/fuzz/fuzz_$harness.py" --impl "$impl" \
      -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
      -artifact_prefix="$work/" "$work/corpus" "tests/fuzz/corpus/$harness" >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || true)
    [ -z "$runs" ] && runs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
    crashes=$(find "$work" -maxdepth 1 -name 'crash-*' -o -maxdepth 1 -name 'timeout-*' \
              -o -maxdepth 1 -name 'oom-*' | wc -l)
    printf '%-10s %-9s %6ss  executions %-10s crashes %s  (rc %s, log %s)\n' \
      "$harness" "$impl" "$seconds" "${runs:-?}" "$crashes" "$rc" "$log"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
      status=1
      grep -A12 'Uncaught Python exception' "$log" | head -n 20
    fi
  done
done
exit $status
