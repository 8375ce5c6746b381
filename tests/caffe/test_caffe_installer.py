"""python -m faceops.caffe install|uninstall on a small fake Caffe tree (no
Caffe needed): idempotent, reversible, clear errors on conflicts; protoc (when
present) accepts the patched proto."""

import shutil
import sys
import subprocess
from pathlib import Path

import pytest

from faceops.caffe import install

REPO = Path(__file__).resolve().parents[2]

PROTO = """syntax = "proto2";

package caffe;

message FillerParameter {
  optional string type = 1 [default = 'constant']; // braces in comments: { }
}

message NetParameter {
  optional string name = 1;
}

// LayerParameter next available layer-specific ID: 149 (last added: clip_param)
message LayerParameter {
  optional string name = 1; // the layer name
  repeated string bottom = 3;
  optional ClipParameter clip_param = 148;
%s}

message ClipParameter {
  required float min = 1;
}

message InnerProductParameter {
  optional uint32 num_output = 1;
  optional bool transpose = 6 [default = false];
%s}

message ScaleParameter {
  optional int32 axis = 1 [default = 1];
  optional FillerParameter bias_filler = 5;
%s}

message AccuracyParameter {
  optional uint32 top_k = 1 [default = 1];
  optional int32 ignore_label = 3;
}

message BlobShape {
  repeated int64 dim = 1 [packed = true];
}

message ParameterParameter {
  optional BlobShape shape = 1;
}

message SoftmaxParameter {
  optional int32 axis = 2 [default = 1];
}
"""
# The parts of Caffe's scale_layer / accuracy_layer (cpp, cu), parameter_layer.hpp
# and filler.hpp the installer patches for NormFace's fields.
LAYER = """#include "caffe/layers/%(name)s_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void %(cls)sLayer<Dtype>::Forward_%(d)s(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const Dtype* bottom_data = bottom[0]->%(d)s_data();
}

}  // namespace caffe
"""
PARAMETER_LAYER = """#include "caffe/layer.hpp"

namespace caffe {
    } else {
      this->blobs_.resize(1);
      this->blobs_[0].reset(new Blob<Dtype>());
      this->blobs_[0]->Reshape(this->layer_param_.parameter_param().shape());
    }
}  // namespace caffe
"""
FILLER = """#ifndef CAFFE_FILLER_HPP
#define CAFFE_FILLER_HPP
namespace caffe {

template <typename Dtype>
Filler<Dtype>* GetFiller(const FillerParameter& param) {
  const std::string& type = param.type();
  if (type == "constant") {
    return new ConstantFiller<Dtype>(param);
  } else if (type == "bilinear") {
    return new BilinearFiller<Dtype>(param);
  } else {
    CHECK(false) << "Unknown filler name: " << param.type();
  }
  return (Filler<Dtype>*)(NULL);
}

}  // namespace caffe

#endif  // CAFFE_FILLER_HPP_
"""
# The parts of Caffe's inner_product_layer.{cpp,cu} the installer patches
# (LayerSetUp and Reshape: the .cpp only).
INNER_PRODUCT = """#include "caffe/layers/inner_product_layer.hpp"

namespace caffe {
%(setup)s
template <typename Dtype>
void InnerProductLayer<Dtype>::Forward_%(d)s(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const Dtype* weight = this->blobs_[0]->%(d)s_data();
}

template <typename Dtype>
void InnerProductLayer<Dtype>::Backward_%(d)s(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[0]) {
  }
}

}  // namespace caffe
"""
INNER_PRODUCT_SETUP = """
template <typename Dtype>
void InnerProductLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  N_ = num_output;
}

template <typename Dtype>
void InnerProductLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  M_ = bottom[0]->count(0, axis);
}
"""
INNER_PRODUCT_HEADER = """template <typename Dtype>
class InnerProductLayer : public Layer<Dtype> {
 public:
  virtual inline const char* type() const { return "InnerProduct"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
};
"""
SOFTMAX_LOSS = """#include "caffe/layers/softmax_loss_layer.hpp"

namespace caffe {

template <typename Dtype>
void SoftmaxWithLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  LayerParameter softmax_param(this->layer_param_);
}

}  // namespace caffe
"""


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "caffe"
    (root / "src/caffe/proto").mkdir(parents=True)
    (root / "src/caffe/proto/caffe.proto").write_text(PROTO % ("", "", ""))
    (root / "src/caffe/layers").mkdir(parents=True)
    for suffix, device in (("cpp", "cpu"), ("cu", "gpu")):
        (root / f"src/caffe/layers/inner_product_layer.{suffix}").write_text(
            INNER_PRODUCT % {"d": device, "setup": INNER_PRODUCT_SETUP if suffix == "cpp" else ""})
        for name, cls in (("scale", "Scale"), ("accuracy", "Accuracy")):
            (root / f"src/caffe/layers/{name}_layer.{suffix}").write_text(
                LAYER % {"name": name, "cls": cls, "d": device})
    (root / "include/caffe/layers").mkdir(parents=True)
    (root / "include/caffe/layers/parameter_layer.hpp").write_text(PARAMETER_LAYER)
    (root / "include/caffe/layers/inner_product_layer.hpp").write_text(INNER_PRODUCT_HEADER)
    (root / "src/caffe/layers/softmax_loss_layer.cpp").write_text(SOFTMAX_LOSS)
    (root / "include/caffe/filler.hpp").write_text(FILLER)
    return root


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def do_install(root, **kwargs):
    return install.install(root, REPO, log=lambda *_: None, **kwargs)


def test_install_twice_changes_nothing_and_uninstall_restores(tree):
    before = snapshot(tree)
    assert do_install(tree)
    proto = (tree / install.PROTO).read_text()
    assert "optional CenterLossParameter center_loss_param = 149;" in proto
    assert "optional PairLossParameter pair_loss_param = 151;" in proto
    assert "optional MarginSoftmaxLossParameter margin_softmax_loss_param = 152;" in proto
    assert "optional CombinedMarginParameter combined_margin_param = 153;" in proto
    assert "optional CosinAddmParameter cosin_add_m_param = 154;" in proto
    assert "optional LabelSpecificAddParameter label_specific_add_param = 155;" in proto
    assert "optional NormalizeParameter normalize_param = 156;" in proto
    assert "optional MarginInnerProductParameter margin_inner_product_param = 157;" in proto
    assert "optional ChannelScaleParameter channel_scale_param = 158;" in proto
    assert "optional FocalLossParameter focal_loss_param = 159;" in proto
    assert "optional AdaCosAddmScaleParameter adacos_add_m_scale_param = 160;" in proto
    net = proto[proto.index("message NetParameter"):]
    assert "optional MemoryOptimizationParameter mem_param = 200;" in net.split("}")[0]
    assert "message MemoryOptimizationParameter {" in proto
    assert "message TripletLossParameter {" in proto and "message NormalizeParameter {" in proto
    inner_product = proto[proto.index("message InnerProductParameter"):]
    assert "optional bool normalize = 7 [default = false];" in inner_product.split("}")[0]
    for suffix, device in (("cpp", "cpu"), ("cu", "gpu")):
        layer = (tree / f"src/caffe/layers/inner_product_layer.{suffix}").read_text()
        forward = layer.index(f"Forward_{device}")
        assert layer.index(f"FaceopsNormalizeWeight_{device}(") > forward
        assert layer.index(f"FaceopsProjectWeightDiff_{device}(") > layer.index(f"Backward_{device}")
        assert '#include "caffe/util/faceops_inner_product.hpp"' in layer
        # The weight as bottom[1]: before the normalize call, and first in Backward.
        assert forward < layer.index(f"FaceopsWeightBottomForward_{device}(") < layer.index(
            f"FaceopsNormalizeWeight_{device}(")
        assert layer.index(f"FaceopsWeightBottomBackward_{device}(") < layer.index("propagate_down[0]")
        assert (layer.count("FaceopsWeightBottomOutputs(") == 2) == (suffix == "cpp")
        scale = (tree / f"src/caffe/layers/scale_layer.{suffix}").read_text()
        assert scale.index("FaceopsClampScale(") > scale.index(f"Forward_{device}")
        accuracy = (tree / f"src/caffe/layers/accuracy_layer.{suffix}").read_text()
        assert accuracy.index("accuracy_param().min_is_better()") > accuracy.index(f"Forward_{device}")
        assert '#include "caffe/util/faceops_caffe_fields.hpp"' in scale and accuracy.count("faceops_caffe_fields") == 1
    header = (tree / "include/caffe/layers/inner_product_layer.hpp").read_text()
    assert header.index("MaxBottomBlobs() const { return 2; }") < header.index("#if 0") < header.index(
        "ExactNumBottomBlobs") < header.index("#endif") < header.index("ExactNumTopBlobs")
    softmax_loss = (tree / "src/caffe/layers/softmax_loss_layer.cpp").read_text()
    assert softmax_loss.index("LossLayer<Dtype>::LayerSetUp") < softmax_loss.index(
        "FaceopsCheckSoftmaxNormalizeType(this->layer_param_);") < softmax_loss.index("softmax_param(")
    softmax = proto[proto.index("message SoftmaxParameter"):].split("}")[0]
    assert 'optional string normalize_type = 7 [default = "Softmax"];' in softmax
    assert "optional FlipParameter flip_param = 164;" in proto and "message FlipParameter {" in proto
    parameter = (tree / "include/caffe/layers/parameter_layer.hpp").read_text()
    assert parameter.index("FaceopsFillParameter(") > parameter.index("->Reshape(")
    filler = (tree / "include/caffe/filler.hpp").read_text()
    assert filler.index("class FaceopsGaussianUnitBallFiller;") < filler.index("GetFiller(")
    assert filler.index('type == "gaussian_unitball"') < filler.index("Unknown filler name")
    assert filler.index('#include "caffe/util/faceops_fillers.hpp"') < filler.index("#endif")
    for message, field in (("ScaleParameter", "optional float min_value = 6;"),
                           ("ScaleParameter", "optional float max_value = 7;"),
                           ("AccuracyParameter", "optional bool min_is_better = 4 [default = false];"),
                           ("ParameterParameter", "optional FillerParameter blob_filler = 2;")):
        assert field in proto[proto.index(f"message {message}"):].split("}")[0], field
    assert "optional InnerDistanceParameter inner_distance_param = 161;" in proto
    assert "optional GeneralContrastiveParameter general_contrastive_loss_param = 162;" in proto
    assert "optional GeneralTripletParameter general_triplet_loss_param = 163;" in proto
    for path in ("include/caffe/layers/center_loss_layer.hpp", "src/caffe/layers/pair_loss_layer.cu",
                 "src/caffe/test/test_triplet_loss_layer.cpp", "include/faceops/center_loss.h",
                 "src/caffe/faceops/center_loss.cpp", "include/faceops/margin_softmax.h",
                 "src/caffe/faceops/margin_softmax.cpp",
                 "include/caffe/layers/margin_softmax_loss_layer.hpp",
                 "src/caffe/layers/margin_softmax_loss_layer.cu", "src/caffe/layers/target_margin_layer.cpp",
                 "src/caffe/layers/normalize_layer.cpp", "src/caffe/test/test_target_margin_layer.cpp",
                 "include/faceops/fork_margins.h", "src/caffe/util/faceops_inner_product.cu",
                 "src/caffe/layers/margin_inner_product_layer.cpp", "src/caffe/layers/channel_scale_layer.cu"):
        assert (tree / path).is_file(), path
    assert not (tree / "src/caffe/faceops/bindings.cpp").exists()

    installed = snapshot(tree)
    assert not do_install(tree)
    assert snapshot(tree) == installed

    assert install.uninstall(tree, log=lambda *_: None)
    assert snapshot(tree) == before
    assert not (tree / "include/faceops").exists() and not (tree / "src/caffe/faceops").exists()


def test_other_first_field_id_renumbers(tree):
    do_install(tree)
    do_install(tree, first_field_id=300)
    proto = (tree / install.PROTO).read_text()
    assert "center_loss_param = 300;" in proto and "pair_loss_param = 302;" in proto
    assert "normalize_param = 307;" in proto
    assert "= 149;" not in proto


# caffe-face's CenterLoss; gehaocool's/xialuxi's CombinedMargin; happynear's or SSD's Normalize.
@pytest.mark.parametrize("message", ["CenterLossParameter", "CombinedMarginParameter", "NormalizeParameter"])
def test_existing_message_is_a_clear_error(tree, message):
    proto = tree / install.PROTO
    proto.write_text(proto.read_text() + f"message {message} {{\n  optional float m = 1;\n}}\n")
    before = snapshot(tree)
    with pytest.raises(install.InstallError, match=f"already defines `message {message}`"):
        do_install(tree)
    assert snapshot(tree) == before


def test_taken_field_id_is_a_clear_error(tree):
    (tree / install.PROTO).write_text(PROTO % ("  optional ClipParameter fork_param = 150;\n", "", ""))
    before = snapshot(tree)
    with pytest.raises(install.InstallError, match=r"id 150 is taken by `fork_param`; pass --first-field-id 151"):
        do_install(tree)
    assert snapshot(tree) == before
    do_install(tree, first_field_id=151)


def test_fork_inner_product_is_a_clear_error(tree):
    """A fork's tree whose InnerProductParameter already has `normalize`."""
    (tree / install.PROTO).write_text(PROTO % ("", "  optional bool normalize = 7;\n", ""))
    before = snapshot(tree)
    with pytest.raises(install.InstallError, match="InnerProductParameter already has `normalize = 7`"):
        do_install(tree)
    assert snapshot(tree) == before


def test_fork_scale_parameter_is_a_clear_error(tree):
    """happynear's tree, whose ScaleParameter already has min_value."""
    (tree / install.PROTO).write_text(PROTO % ("", "", "  optional float min_value = 6;\n"))
    before = snapshot(tree)
    with pytest.raises(install.InstallError, match="ScaleParameter already has `min_value = 6`"):
        do_install(tree)
    assert snapshot(tree) == before


def test_unknown_filler_is_a_clear_error(tree):
    (tree / "include/caffe/filler.hpp").write_text("// a fork's filler.hpp\n")
    before = snapshot(tree)
    with pytest.raises(install.InstallError, match='filler.hpp: .* cannot add the "gaussian_unitball" filler'):
        do_install(tree)
    assert snapshot(tree) == before


def test_unknown_inner_product_layer_is_a_clear_error(tree):
    (tree / "src/caffe/layers/inner_product_layer.cu").write_text("// a fork's rewrite\n")
    before = snapshot(tree)
    with pytest.raises(install.InstallError, match="not Caffe's InnerProduct layer as faceops knows it"):
        do_install(tree)
    assert snapshot(tree) == before


def test_installs_from_the_sources_a_package_ships(tree, tmp_path):
    """An installed faceops (no checkout around it) finds the layer sources it ships in
    faceops/caffe/sources (pyproject.toml's wheel.packages)."""
    package = tmp_path / "site-packages/faceops/caffe"
    package.mkdir(parents=True)
    shutil.copy(REPO / "python/faceops/caffe/install.py", package / "install.py")
    for tree_name in ("caffe_layers", "csrc", "cuda"):
        shutil.copytree(REPO / tree_name, package / "sources" / tree_name)
    run = subprocess.run([sys.executable, str(package / "install.py"), "install", "--caffe-root", str(tree)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (tree / "include/faceops/fork_margins.h").is_file()
    shutil.rmtree(package / "sources")
    run = subprocess.run([sys.executable, str(package / "install.py"), "install", "--caffe-root", str(tree)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "holds no faceops layer sources" in run.stderr


def test_foreign_layer_file_is_a_clear_error(tree):
    foreign = tree / "include/caffe/layers/center_loss_layer.hpp"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_text("// caffe-face's center loss\n")
    with pytest.raises(install.InstallError, match="was not installed by faceops"):
        do_install(tree)


def test_command_line(tree, capsys):
    assert install.main(["install", "--caffe-root", str(tree), "--faceops-root", str(REPO)]) == 0
    assert "Rebuild Caffe" in capsys.readouterr().out
    assert install.main(["install", "--caffe-root", str(tree / "nowhere"), "--faceops-root", str(REPO)]) == 1
    assert "is not a Caffe source tree" in capsys.readouterr().err
    assert install.main(["uninstall", "--caffe-root", str(tree)]) == 0


@pytest.mark.skipif(shutil.which("protoc") is None, reason="protoc not installed")
def test_protoc_accepts_the_patched_proto(tree, tmp_path):
    do_install(tree)
    proto = tree / install.PROTO
    subprocess.run(["protoc", f"--proto_path={proto.parent}", f"--cpp_out={tmp_path}", proto.name], check=True)
    header = (tmp_path / "caffe.pb.h").read_text()
    assert "class CenterLossParameter" in header and "TripletLossParameter_Mining_SEMIHARD" in header
    assert "class MarginSoftmaxLossParameter" in header and "class LabelSpecificAddParameter" in header


def test_real_caffe_proto(caffe_dir, tmp_path):
    """Debian's caffe.proto from the .ci/build_caffe.sh tree: 147 is swish_param there."""
    real = caffe_dir / "src" / install.PROTO
    if not real.is_file():
        pytest.skip(f"no Caffe source tree in {caffe_dir} (run .ci/build_caffe.sh)")
    tree = tmp_path / "caffe"
    (tree / install.PROTO).parent.mkdir(parents=True)
    (tree / install.PROTO).write_text(install.unpatch_proto(real.read_text()))
    for path in install.SOURCE_PATCHES:
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(install.unpatch_proto((caffe_dir / "src" / path).read_text()))
    with pytest.raises(install.InstallError, match="id 147 is taken by `swish_param`; pass --first-field-id 149"):
        do_install(tree, first_field_id=147)
    do_install(tree)
    if shutil.which("protoc"):
        proto = tree / install.PROTO
        subprocess.run(["protoc", f"--proto_path={proto.parent}", f"--python_out={tmp_path}", proto.name],
                       check=True)
