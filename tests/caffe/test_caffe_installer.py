"""python -m faceops.caffe install|uninstall on a small fake Caffe tree (no
Caffe needed): idempotent, reversible, clear errors on conflicts; protoc (when
present) accepts the patched proto."""

import shutil
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

// LayerParameter next available layer-specific ID: 149 (last added: clip_param)
message LayerParameter {
  optional string name = 1; // the layer name
  repeated string bottom = 3;
  optional ClipParameter clip_param = 148;
%s}

message ClipParameter {
  required float min = 1;
}
"""


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "caffe"
    (root / "src/caffe/proto").mkdir(parents=True)
    (root / "src/caffe/proto/caffe.proto").write_text(PROTO % "")
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
    assert "message TripletLossParameter {" in proto and "message NormalizeParameter {" in proto
    for path in ("include/caffe/layers/center_loss_layer.hpp", "src/caffe/layers/pair_loss_layer.cu",
                 "src/caffe/test/test_triplet_loss_layer.cpp", "include/faceops/center_loss.h",
                 "src/caffe/faceops/center_loss.cpp", "include/faceops/margin_softmax.h",
                 "src/caffe/faceops/margin_softmax.cpp",
                 "include/caffe/layers/margin_softmax_loss_layer.hpp",
                 "src/caffe/layers/margin_softmax_loss_layer.cu", "src/caffe/layers/target_margin_layer.cpp",
                 "src/caffe/layers/normalize_layer.cpp", "src/caffe/test/test_target_margin_layer.cpp"):
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
    (tree / install.PROTO).write_text(PROTO % "  optional ClipParameter fork_param = 150;\n")
    before = snapshot(tree)
    with pytest.raises(install.InstallError, match=r"id 150 is taken by `fork_param`; pass --first-field-id 151"):
        do_install(tree)
    assert snapshot(tree) == before
    do_install(tree, first_field_id=151)


def test_foreign_layer_file_is_a_clear_error(tree):
    foreign = tree / "include/caffe/layers/center_loss_layer.hpp"
    foreign.parent.mkdir(parents=True)
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
    with pytest.raises(install.InstallError, match="id 147 is taken by `swish_param`; pass --first-field-id 149"):
        do_install(tree, first_field_id=147)
    do_install(tree)
    if shutil.which("protoc"):
        proto = tree / install.PROTO
        subprocess.run(["protoc", f"--proto_path={proto.parent}", f"--python_out={tmp_path}", proto.name],
                       check=True)
