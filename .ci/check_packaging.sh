#!/usr/bin/env bash
# Packaging check: what a user gets from `pip wheel .` and from the sdist, each
# installed into a fresh venv and run from outside the source tree.
#   1. `python -m build --sdist` carries every file git tracks;
#   2. `pip wheel .` (build isolation: pyproject's build requirements only;
#      it reuses build/<wheel tag> when the tree was built before) gives a
#      wheel whose extension has no run path into the build tree; installed
#      in a fresh venv it imports, `faceops selfcheck` passes and
#      `faceops train` (built-in default) writes its run;
#   3. the sdist, installed in another fresh venv (a full build from the
#      unpacked sdist alone), imports and passes `faceops selfcheck`.
# FACEOPS_CUDA defaults to OFF here (the check is about files, and the wheel
# must import on machines without a GPU); set FACEOPS_CUDA=ON to include them.
# Usage: bash .ci/check_packaging.sh   (about 5 minutes on 2 idle cores)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PIP_DISABLE_PIP_VERSION_CHECK=1
export FACEOPS_CUDA=${FACEOPS_CUDA:-OFF}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "sdist"
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q build >"$work/tools.log" 2>&1 || { cat "$work/tools.log"; exit 1; }
"$work/tools/bin/python" -m build --sdist --outdir "$work/dist" . >"$work/sdist.log" 2>&1 ||
  { cat "$work/sdist.log"; exit 1; }
sdist=$(echo "$work"/dist/faceops-*.tar.gz)
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort >"$work/sdist.files"
git ls-files | sort >"$work/tracked.files"
missing=$(comm -23 "$work/tracked.files" "$work/sdist.files")
if [ -n "$missing" ]; then
  echo "the sdist lacks tracked files:"; echo "$missing"; exit 1
fi
echo "$(basename "$sdist"): $(wc -l <"$work/sdist.files") files, every tracked file included"

step "wheel from the source tree"
"$work/tools/bin/pip" wheel -q --no-deps -w "$work/dist" . >"$work/wheel.log" 2>&1 ||
  { tail -n 40 "$work/wheel.log"; exit 1; }
wheel=$(echo "$work"/dist/faceops-*.whl)
mkdir "$work/unpacked"
(cd "$work/unpacked" && python3 -m zipfile -e "$wheel" .)
for so in "$work"/unpacked/faceops/*.so; do
  if readelf -d "$so" | grep -E 'R(UN)?PATH' | grep -F "$root"; then
    echo "$(basename "$so") has a run path into the build tree"; exit 1
  fi
done
echo "$(basename "$wheel"): $(python3 -m zipfile -l "$wheel" | tail -n +2 | wc -l) files"

# A fresh venv, run from an empty directory: nothing of the source tree on sys.path.
check_install() {  # check_install VENV WHAT_TO_INSTALL
  python3 -m venv "$1"
  "$1/bin/pip" install -q "$2" >"$1.log" 2>&1 || { tail -n 40 "$1.log"; exit 1; }
  mkdir -p "$1.run"
  (cd "$1.run" &&
    "$1/bin/python" -c "import faceops, sys; assert faceops.__file__.startswith(sys.prefix), faceops.__file__; print('faceops', faceops.__version__, 'from', faceops.__file__, faceops.cpu_features())" &&
    "$1/bin/faceops" selfcheck)
}

step "the wheel in a fresh venv: import, selfcheck, train"
check_install "$work/venv-wheel" "$wheel"
(cd "$work/venv-wheel.run" && "$work/venv-wheel/bin/faceops" train --run-dir run >train.log 2>&1) ||
  { tail -n 40 "$work/venv-wheel.run/train.log"; exit 1; }
tail -n 3 "$work/venv-wheel.run/train.log"
ls "$work/venv-wheel.run/run" | grep -q . || { echo "faceops train wrote nothing to its --run-dir"; exit 1; }
echo "faceops train wrote: $(ls "$work/venv-wheel.run/run" | tr '\n' ' ')"

step "the sdist in a fresh venv (a build from the sdist alone): import, selfcheck"
check_install "$work/venv-sdist" "$sdist"

step "packaging check passed"
