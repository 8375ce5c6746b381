#!/usr/bin/env bash
# The Caffe part of CI after .ci/build_caffe.sh: the faceops layer gtests in
# the built Caffe, then the pycaffe / `caffe train` tests under Debian's
# /usr/bin/python3 (pycaffe is built for it and its NumPy 1.x).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${FACEOPS_CAFFE_DIR:-$HOME/.cache/faceops/caffe}"
filter="$(sed -n 's/^FACEOPS_GTEST_FILTER="\(.*\)"$/\1/p' .ci/build_caffe.sh)"
(cd "$dir/src" && timeout 900 ../build/test/test.testbin --gtest_filter="$filter")
/usr/bin/python3 -m venv --system-site-packages .venv-caffe
# --no-deps: keep Debian's NumPy 1.x, which pycaffe was compiled against.
FACEOPS_CUDA=OFF .venv-caffe/bin/python -m pip install -q --no-deps --config-settings=build-dir=build/caffe .
.venv-caffe/bin/python -m pip install -q pytest
FACEOPS_REQUIRE_CAFFE=1 timeout 1200 .venv-caffe/bin/python -m pytest tests/caffe
