"""pycaffe for the tests of the faceops Caffe layers.

The Caffe build is the one .ci/build_caffe.sh makes under FACEOPS_CAFFE_DIR
(default ~/.cache/faceops/caffe), its pycaffe built for Debian's
/usr/bin/python3: these tests run under that interpreter (or a venv made from
it) with faceops installed, and skip, saying why, anywhere else.  With
FACEOPS_REQUIRE_CAFFE=1 (CI) a missing build fails them instead.
"""

import os
import sys
import warnings
from pathlib import Path

import pytest

CAFFE_DIR = Path(os.environ.get("FACEOPS_CAFFE_DIR", Path.home() / ".cache/faceops/caffe"))
PYCAFFE = CAFFE_DIR / "src/python"
FACEOPS_LAYERS = {"CenterLoss", "TripletLoss", "PairLoss", "MarginSoftmaxLoss", "CombinedMargin",
                  "CosinAddm", "LabelSpecificAdd", "Normalize", "MarginInnerProduct", "ChannelScale",
                  "FocalLoss", "NormL2", "AdaCosAddmScale", "InnerDistance",
                  "GeneralContrastiveLoss", "GeneralTripletLoss", "Flip", "GlobalLSEMargin"}


def _built_for():
    cache = CAFFE_DIR / "build/CMakeCache.txt"
    for line in cache.read_text().splitlines():
        if line.startswith("PYTHON_EXECUTABLE:"):
            return line.split("=", 1)[1]
    return None


def _load_caffe():
    """(the caffe module, None), or (None, why it cannot be used here)."""
    if not (PYCAFFE / "caffe/_caffe.so").exists():
        return None, f"no pycaffe build in {PYCAFFE}: run .ci/build_caffe.sh (or set FACEOPS_CAFFE_DIR)"
    built_for = _built_for()
    if built_for is None or os.path.realpath(built_for) != os.path.realpath(sys._base_executable):
        return None, (f"pycaffe in {PYCAFFE} is built for {built_for}; this interpreter is "
                      f"{sys._base_executable}")
    os.environ.setdefault("GLOG_minloglevel", "2")  # read when glog loads: keep Caffe quiet
    sys.path.insert(0, str(PYCAFFE))
    with warnings.catch_warnings():  # pycaffe's imports (skimage, ...) warn on Python 3.11
        warnings.simplefilter("ignore")
        import caffe
    missing = FACEOPS_LAYERS - set(caffe.layer_type_list())
    if missing:
        return None, f"the Caffe in {CAFFE_DIR} lacks the faceops layers {sorted(missing)}"
    caffe.set_mode_cpu()
    return caffe, None


@pytest.fixture(scope="session")
def caffe_dir():
    return CAFFE_DIR


def require(reason):
    """Skip, or with FACEOPS_REQUIRE_CAFFE=1 (CI) fail, saying why."""
    if os.environ.get("FACEOPS_REQUIRE_CAFFE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def caffe():
    module, reason = _load_caffe()
    if module is None:
        if os.environ.get("FACEOPS_REQUIRE_CAFFE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return module


@pytest.fixture
def make_net(caffe, tmp_path):
    """make_net(prototxt text) -> caffe.Net in the TRAIN phase."""

    def make(text, name="net.prototxt"):
        path = tmp_path / name
        path.write_text(text)
        return caffe.Net(str(path), caffe.TRAIN)

    return make
