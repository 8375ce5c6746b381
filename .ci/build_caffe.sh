#!/usr/bin/env bash
# Builds a real Caffe (Debian bullseye's caffe source package, CPU only) with
# the faceops layers installed into it: the `caffe` tool (build/tools/caffe,
# for `caffe train`), convert_imageset, pycaffe for Debian's /usr/bin/python3
# and the faceops layer gtests.  OpenCV, LMDB and LevelDB are on (Debian's
# packages), so the ImageData and Data layers of the forks' prototxts work.  Idempotent: a second run reuses the source
# tree, the build directory and ccache, and only recompiles what changed.
#
#   FACEOPS_CAFFE_DIR  where the source and build trees live
#                      (default: $HOME/.cache/faceops/caffe)
#   CCACHE_DIR         default: $HOME/.cache/ccache
#   JOBS               make -j (default: nproc)
#
# Needs root (or sudo) the first time, for apt.  Prints the paths the tests
# need as its last lines.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${FACEOPS_CAFFE_DIR:-$HOME/.cache/faceops/caffe}"
src="$dir/src"
build="$dir/build"
version="1.0.0+git20180821.99bd997-8"
# The gtest filter for these tests (.ci/caffe_tests.sh uses it).
FACEOPS_GTEST_FILTER="*CenterLoss*:*TripletLoss*:*PairLoss*:*MarginSoftmaxLoss*:*TargetMargin*:*NormalizeLayer*:*InnerProductNormalize*:*MarginInnerProduct*:*ChannelScale*:*FocalLoss*:*NormL2*:*AdaCosAddmScale*:*NormFaceFields*:*InnerDistance*:*GeneralContrastiveLoss*:*GeneralTripletLoss*:*FlipLayer*:*InnerProductWeightBottom*:*GlobalLSEMargin*"
tests="center_loss_layer,triplet_loss_layer,pair_loss_layer,margin_softmax_loss_layer,target_margin_layer,normalize_layer,inner_product_normalize,margin_inner_product_layer,channel_scale_layer,focal_loss_layer,norm_l2_layer,adacos_add_m_scale_layer,normface_fields,inner_distance_layer,general_contrastive_loss_layer,general_triplet_loss_layer,flip_layer,inner_product_weight_bottom,global_lse_margin_layer"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

packages=(g++ make cmake dpkg-dev ccache protobuf-compiler libprotobuf-dev libgoogle-glog-dev
  libgflags-dev libhdf5-dev libblas-dev libboost-system-dev libboost-thread-dev
  libboost-filesystem-dev libboost-python-dev python3-dev python3-numpy python3-skimage
  python3-protobuf python3-six python3-venv libopencv-dev liblmdb-dev libleveldb-dev
  libsnappy-dev python3-lmdb)
if dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  echo "build_caffe: build dependencies present"
else
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

if [ ! -f "$src/.faceops_source_ready" ]; then
  # Bookworm has no caffe; bullseye's source package builds on it.  Only a
  # deb-src line: the binary packages stay bookworm's.
  list=/etc/apt/sources.list.d/faceops-bullseye-src.sources
  if ! apt-cache showsrc caffe 2>/dev/null | grep -q "^Version: $version$"; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
      $sudo tee "$list" >/dev/null
    $sudo apt-get update -q
  fi
  rm -rf "$src"
  mkdir -p "$dir"
  (cd "$dir" && apt-get source --download-only "caffe=$version" && dpkg-source -x "caffe_$version.dsc" "$src")
  # Bookworm's protobuf dropped the two-argument CodedInputStream::SetTotalBytesLimit.
  sed -i 's/SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)/SetTotalBytesLimit(kProtoReadBytesLimit)/' \
    "$src/src/caffe/util/io.cpp"
  grep -q 'SetTotalBytesLimit(kProtoReadBytesLimit);' "$src/src/caffe/util/io.cpp"
  touch "$src/.faceops_source_ready"
fi

# The installer is plain Python; it leaves the tree untouched when nothing changed.
python3 "$repo/python/faceops/caffe/install.py" install --caffe-root "$src" --faceops-root "$repo"

mkdir -p "$build"
# cmake runs every time: Caffe globs its sources, so new files need a re-run.
# USE_OPENMP: the faceops core uses OpenMP.
cmake -S "$src" -B "$build" \
  -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
  -DCPU_ONLY=ON -DBLAS=Generic -DUSE_OPENMP=ON \
  -DBUILD_python=ON -DBUILD_python_layer=ON -Dpython_version=3 -DPYTHON_EXECUTABLE=/usr/bin/python3 \
  -DUSE_OPENCV=ON -DUSE_LEVELDB=ON -DUSE_LMDB=ON -DBUILD_docs=OFF \
  -DBUILD_only_tests="$tests" >"$build/cmake.log" 2>&1 || { cat "$build/cmake.log"; exit 1; }
ccache -z >/dev/null
echo "build_caffe: make caffe caffe.bin convert_imageset pycaffe test.testbin in $build (log: $build/make.log)"
# caffe.bin is the `caffe` tool (build/tools/caffe); `caffe` alone is the library.
if ! make -C "$build" -j"${JOBS:-$(nproc)}" caffe caffe.bin convert_imageset pycaffe test.testbin >"$build/make.log" 2>&1; then
  grep -B3 -A12 -e 'error' -e 'Error' "$build/make.log" | head -150
  exit 1
fi
# Warnings in faceops code (Caffe's own are many and not ours).
grep -E -A3 '(/src/caffe/faceops/|/include/faceops/|_loss_layer\.|target_margin_layer\.|normalize_layer\.|norm_l2_layer\.|adacos_add_m_scale_layer\.|inner_distance_layer\.|general_contrastive_loss_layer\.|general_triplet_loss_layer\.|flip_layer\.|global_lse_margin_layer\.|faceops_caffe_fields|faceops_fillers|faceops_bridge)[^ :]*:[0-9]+:[0-9]+: warning' \
  "$build/make.log" || true

# Caffe's CPU_ONLY build does not compile .cu files: compile the faceops ones
# (layers and core) here as Caffe's GPU build would, against Caffe's headers
# with CPU_ONLY undefined.  Those include cuBLAS and cuRAND, which a bare CUDA
# toolkit may lack: then their headers come from NVIDIA's PyPI wheels.
if command -v nvcc >/dev/null; then
  cuda_include="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")/include"
  includes=(-I "$src/include" -I "$build/include" -I /usr/include/hdf5/serial)
  if [ ! -f "$cuda_include/cublas_v2.h" ] || [ ! -f "$cuda_include/curand.h" ]; then
    headers="$dir/cuda-headers"
    if [ ! -f "$headers/.ready" ]; then
      case "$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')" in
        12) wheels=("nvidia-cublas-cu12==12.*" "nvidia-curand-cu12==10.*") ;;
        13) wheels=("nvidia-cublas==13.*" "nvidia-curand==10.*") ;;
        *) echo "build_caffe: no cuBLAS/cuRAND headers for this nvcc" >&2; exit 1 ;;
      esac
      rm -rf "$headers" && mkdir -p "$headers/include"
      python3 -m pip download -q --no-deps -d "$headers/wheels" "${wheels[@]}"
      python3 -c 'import sys, zipfile, pathlib
for wheel in pathlib.Path(sys.argv[1]).glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if "/include/" in name and name.endswith(".h"):
                pathlib.Path(sys.argv[2], pathlib.Path(name).name).write_bytes(z.read(name))' \
        "$headers/wheels" "$headers/include"
      rm -rf "$headers/wheels"
      touch "$headers/.ready"
    fi
    includes+=(-I "$headers/include")
  fi
  mkdir -p "$build/cuda_check"
  # The faceops files and Caffe's own files the installer patched (InnerProduct).
  for cu in $(python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print(" ".join(f for f in m["files"] + m.get("patched", []) if f.endswith(".cu")))' "$src/.faceops_caffe.json"); do
    ccache nvcc -std=c++17 -arch=sm_80 "${includes[@]}" -c "$src/$cu" -o "$build/cuda_check/$(basename "$cu" .cu).o" 2>&1 |
      grep -v -e 'pragma message' -e 'BOOST_' || true
    test -f "$build/cuda_check/$(basename "$cu" .cu).o"
  done
  echo "build_caffe: CUDA compile check passed: $(ls "$build/cuda_check" | tr '\n' ' ')"
fi

ccache --show-stats 2>/dev/null | grep -i -e "hits" -e "misses" | head -3 || true  # this build only (zeroed above)
echo "build_caffe: Caffe source tree: $src"
echo "build_caffe: build tree:        $build"
echo "build_caffe: caffe tool:       $build/tools/caffe"
echo "build_caffe: pycaffe:           PYTHONPATH=$src/python (for /usr/bin/python3)"
echo "build_caffe: gtests:            (cd $src && $build/test/test.testbin --gtest_filter='$FACEOPS_GTEST_FILTER')"
