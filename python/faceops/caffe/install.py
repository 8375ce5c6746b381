"""Adds the faceops layers to a Caffe source tree, or removes them.

    python -m faceops.caffe install --caffe-root DIR [--first-field-id 149]
    python -m faceops.caffe uninstall --caffe-root DIR

Plain Python, no Caffe and no compiled faceops needed: from a source checkout
it also runs as ``python3 python/faceops/caffe/install.py ...``.

``install`` copies the layer sources of ``caffe_layers/`` and the core sources
(``csrc/``, ``cuda/``) into the tree, adds the faceops messages and
LayerParameter fields to ``src/caffe/proto/caffe.proto`` between marker
comments, and records what it wrote in ``.faceops_caffe.json`` at the tree's
root.  It is idempotent: the proto is patched from its unpatched form, so a
second run changes nothing, and a run from newer faceops sources updates the
tree.  ``uninstall`` deletes the recorded files and the marked proto blocks.
"""

import argparse
import json
import re
import sys
from pathlib import Path

# (message, LayerParameter field), numbered from --first-field-id in this order.
LAYER_FIELDS = (
    ("CenterLossParameter", "center_loss_param"),
    ("TripletLossParameter", "triplet_loss_param"),
    ("PairLossParameter", "pair_loss_param"),
    ("MarginSoftmaxLossParameter", "margin_softmax_loss_param"),
    # The legacy margin layers' messages, under the forks' names (gehaocool,
    # xialuxi, happynear): a fork tree that has them is refused.
    ("CombinedMarginParameter", "combined_margin_param"),
    ("CosinAddmParameter", "cosin_add_m_param"),
    ("LabelSpecificAddParameter", "label_specific_add_param"),
    ("NormalizeParameter", "normalize_param"),
    ("MarginInnerProductParameter", "margin_inner_product_param"),  # wy1iu/sphereface
    ("ChannelScaleParameter", "channel_scale_param"),  # happynear (AM-Softmax)
    ("FocalLossParameter", "focal_loss_param"),  # xialuxi/arcface-caffe
    ("AdaCosAddmScaleParameter", "adacos_add_m_scale_param"),  # xialuxi/arcface-caffe
    # happynear's caffe-windows, under NormFace.
    ("InnerDistanceParameter", "inner_distance_param"),
    ("GeneralContrastiveParameter", "general_contrastive_loss_param"),
    ("GeneralTripletParameter", "general_triplet_loss_param"),
    ("FlipParameter", "flip_param"),
)
# Messages of the fragment that no LayerParameter field holds.
OTHER_MESSAGES = ("MemoryOptimizationParameter",)
# Fields the forks add to Caffe's own messages: {message: [(field, declaration)]}.
# InnerProductParameter.normalize: weight rows L2-normalised (every margin fork).
MESSAGE_FIELDS = {
    "InnerProductParameter": [("normalize", "optional bool normalize = 7 [default = false];")],
    # NetParameter.mem_param: the forks' memory optimisation, parsed and ignored.
    "NetParameter": [("mem_param", "optional MemoryOptimizationParameter mem_param = 200;")],
    # NormFace (happynear's caffe-windows, its ids): the scale's clamp, accuracy
    # on distances, a filled Parameter blob (caffe/util/faceops_caffe_fields.hpp).
    "ScaleParameter": [("min_value", "optional float min_value = 6;"),
                       ("max_value", "optional float max_value = 7;")],
    "AccuracyParameter": [("min_is_better", "optional bool min_is_better = 4 [default = false];")],
    "ParameterParameter": [("blob_filler", "optional FillerParameter blob_filler = 2;")],
    # caffe-windows' SoftmaxWithLoss: "Softmax" (the default) is Caffe's own
    # softmax; its "L1"/"L2" are refused (caffe/util/faceops_caffe_fields.hpp).
    "SoftmaxParameter": [("normalize_type", 'optional string normalize_type = 7 [default = "Softmax"];')],
}
DEFAULT_FIRST_FIELD_ID = 149  # BVLC/Debian Caffe: swish_param = 147, clip_param = 148
PROTO = Path("src/caffe/proto/caffe.proto")
MANIFEST = Path(".faceops_caffe.json")
CORE_HEADERS = Path("include/faceops")  # #include "faceops/center_loss.h"
CORE_SOURCES = Path("src/caffe/faceops")  # globbed by Caffe's CMake and Makefile
NOT_FOR_CAFFE = {"bindings.cpp", "without_cuda.cpp", "device.cu"}  # Python module only
BEGIN = "// >>> faceops: added by `python -m faceops.caffe install`, removed by `uninstall`"
END = "// <<< faceops"
BLOCK = re.compile(r"^[ \t]*// >>> faceops[^\n]*\n.*?^[ \t]*// <<< faceops[^\n]*\n", re.M | re.S)
FIELD = re.compile(r"^\s*(?:optional|required|repeated)\s+[\w.]+\s+(\w+)\s*=\s*(\d+)", re.M)


class InstallError(Exception):
    """A tree faceops cannot be installed into (or removed from) as asked."""


# An installed faceops carries the sources it installs here, laid out as in the
# checkout (caffe_layers/, csrc/, cuda/): see pyproject.toml's wheel.packages.
PACKAGED_SOURCES = Path(__file__).resolve().parent / "sources"


def default_faceops_root():
    """The checkout this file is in, else the sources shipped inside the package."""
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "caffe_layers" / "src").is_dir():
        return checkout
    return PACKAGED_SOURCES


def sources(faceops_root):
    """{destination relative to the Caffe root: source file} for everything installed."""
    root = Path(faceops_root)
    layers, core = root / "caffe_layers", root / "csrc"
    if not (layers / "src").is_dir() or not (core / "faceops").is_dir():
        raise InstallError(
            f"{root} holds no faceops layer sources (no caffe_layers/src or csrc/faceops): "
            "pass --faceops-root CHECKOUT, a faceops source checkout"
        )
    files = {}
    for tree in ("include", "src"):
        for path in sorted((layers / tree).rglob("*")):
            if path.is_file():
                files[path.relative_to(layers)] = path
    for path in sorted((core / "faceops").glob("*.h")):
        files[CORE_HEADERS / path.name] = path
    for pattern in ("csrc/*.h", "csrc/*.cpp", "cuda/*.cuh", "cuda/*.cu"):
        for path in sorted(root.glob(pattern)):
            if path.name not in NOT_FOR_CAFFE:
                files[CORE_SOURCES / path.name] = path
    return files


def _strip_comments(text):
    return re.sub(r"//[^\n]*", lambda m: " " * len(m.group()), text)


def _message_body(text, name):
    """(start, end) of the body of `message name { ... }`: end is the closing brace."""
    code = _strip_comments(text)
    match = re.search(r"^\s*message\s+%s\s*\{" % name, code, re.M)
    if not match:
        raise InstallError(f"{PROTO}: no `message {name}`; is this a Caffe source tree?")
    depth = 0
    for index in range(match.end() - 1, len(code)):
        depth += {"{": 1, "}": -1}.get(code[index], 0)
        if depth == 0:
            return match.end(), index
    raise InstallError(f"{PROTO}: `message {name}` has no closing brace")


def _add_fields(text, message, fields):
    """text with `fields` (declaration lines) in a marked block at the end of `message`."""
    _, end = _message_body(text, message)
    line_start = text.rfind("\n", 0, end) + 1
    if text[line_start:end].strip():
        raise InstallError(f"{PROTO}: the closing brace of {message} is not on its own line")
    return f"{text[:line_start]}  {BEGIN}\n{fields}  {END}\n{text[line_start:]}"


def unpatch_proto(text):
    return BLOCK.sub("", text)


def patch_proto(text, fragment, first_field_id):
    """caffe.proto text (unpatched) -> text with the faceops fields and messages."""
    for message in [message for message, _ in LAYER_FIELDS] + list(OTHER_MESSAGES):
        if re.search(r"^\s*message\s+%s\b" % message, _strip_comments(text), re.M):
            raise InstallError(
                f"{PROTO} already defines `message {message}` (this tree has its own layer of "
                "that name, e.g. caffe-face's CenterLoss): remove it first, or use the faceops "
                "Python layers (faceops.caffe.layers), which need no rebuild"
            )
    start, end = _message_body(text, "LayerParameter")
    taken = {int(number): name for name, number in FIELD.findall(_strip_comments(text[start:end]))}
    ids = range(first_field_id, first_field_id + len(LAYER_FIELDS))
    for (_, field), number in zip(LAYER_FIELDS, ids):
        if field in taken.values():
            raise InstallError(f"{PROTO}: LayerParameter already has a field `{field}`")
        if number in taken:
            raise InstallError(
                f"{PROTO}: LayerParameter field id {number} is taken by `{taken[number]}`; "
                f"pass --first-field-id {max(taken) + 1} (above every id in use)"
            )
    fields = "".join(
        f"  optional {message} {field} = {number};\n"
        for (message, field), number in zip(LAYER_FIELDS, ids)
    )
    text = _add_fields(text, "LayerParameter", fields)
    for message, added in MESSAGE_FIELDS.items():
        start, end = _message_body(text, message)
        body = _strip_comments(text[start:end])
        for field, declaration in added:
            number = int(re.search(r"=\s*(\d+)", declaration).group(1))
            for name, used in FIELD.findall(body):
                if name == field or int(used) == number:
                    raise InstallError(
                        f"{PROTO}: {message} already has `{name} = {used}`, which faceops adds "
                        f"as `{declaration}` (a fork's tree?)")
        text = _add_fields(text, message, "".join(f"  {d}\n" for _, d in added))
    if not text.endswith("\n"):
        text += "\n"
    return f"{text}{BEGIN}\n\n{fragment.rstrip()}\n{END}\n"


# Caffe's own InnerProduct learns `normalize: true` as the forks patch it: the
# weight rows are normalised in place at each forward pass, and the weight's
# diff loses its radial part (caffe/util/faceops_inner_product.hpp).
_INCLUDE = '#include "caffe/layers/inner_product_layer.hpp"\n'


def _block(line, indent="  "):
    return f"{indent}{BEGIN}\n{indent}{line}\n{indent}{END}\n"


def patch_inner_product(text, device, name):
    """Caffe's inner_product_layer.{cpp,cu} (unpatched) -> text with normalize
    support and caffe-windows' weight as a second bottom."""
    include = text.find(_INCLUDE)
    forward = re.search(r"InnerProductLayer<Dtype>::Forward_%s\([^)]*\)\s*\{\n" % device, text)
    backward = re.search(r"InnerProductLayer<Dtype>::Backward_%s\([^)]*\)\s*\{\n" % device, text)
    closing = text.find("\n}\n", backward.end()) + 1 if backward else 0
    if include < 0 or not forward or closing <= 0:
        raise InstallError(
            f"{name}: not Caffe's InnerProduct layer as faceops knows it (no Forward_{device} / "
            f"Backward_{device} / its include): cannot add inner_product_param.normalize")
    include += len(_INCLUDE)
    call = "FaceopsNormalizeWeight_%s" % device
    forward_call = (f"if (this->layer_param_.inner_product_param().normalize()) "
                    f"{call}(this->layer_param_, this->blobs_[0].get(), transpose_);")
    backward_call = (f"if (this->layer_param_.inner_product_param().normalize() && "
                     f"this->param_propagate_down_[0]) FaceopsProjectWeightDiff_{device}("
                     f"this->blobs_[0].get());")
    weight_forward = (f"if (bottom.size() == 2) {{ FaceopsWeightBottomForward_{device}("
                      f"bottom, top, M_, N_, K_); return; }}")
    weight_backward = (f"if (bottom.size() == 2) {{ FaceopsWeightBottomBackward_{device}("
                       f"top, propagate_down, bottom, M_, N_, K_); return; }}")
    text = (text[:include] + f"{BEGIN}\n#include \"caffe/util/faceops_inner_product.hpp\"\n{END}\n"
            + text[include:forward.end()] + _block(weight_forward) + _block(forward_call)
            + text[forward.end():backward.end()] + _block(weight_backward)
            + text[backward.end():closing] + _block(backward_call) + text[closing:])
    if device != "cpu":
        return text
    # LayerSetUp and Reshape are in the .cpp only.
    return _insert(text, name, "the weight as a second bottom", [
        (r"InnerProductLayer<Dtype>::LayerSetUp\([^)]*\)\s*\{\n",
         ["if (bottom.size() == 2) {",
          "  K_ = bottom[0]->count(bottom[0]->CanonicalAxisIndex(",
          "      this->layer_param_.inner_product_param().axis()));",
          "  N_ = FaceopsWeightBottomOutputs(this->layer_param_, K_, bottom[1]->shape());",
          "  bias_term_ = false;",
          "  transpose_ = false;",
          "  return;",
          "}"], "  "),
        (r"InnerProductLayer<Dtype>::Reshape\([^)]*\)\s*\{\n",
         ["if (bottom.size() == 2) N_ = FaceopsWeightBottomOutputs(this->layer_param_, K_, "
          "bottom[1]->shape());"], "  ")])


def patch_inner_product_header(text, device, name):
    """inner_product_layer.hpp: one or two bottoms (the weight as bottom[1]).
    Caffe's ExactNumBottomBlobs() = 1 is kept out of the build by #if 0."""
    exact = r"  virtual inline int ExactNumBottomBlobs\(\) const \{ return 1; \}\n"
    return _insert(text, name, "the weight as a second bottom", [
        (r"\n(?=%s)" % exact,
         ["// caffe-windows' weight as bottom[1] (caffe/util/faceops_inner_product.hpp).",
          "virtual inline int MinBottomBlobs() const { return 1; }",
          "virtual inline int MaxBottomBlobs() const { return 2; }",
          "#if 0"], "  "),
        (exact, ["#endif"], "  ")])


def _insert(text, name, what, edits):
    """text with each (pattern, code, indent) inserted, as a marked block, after
    the one match of pattern (a regex); InstallError naming `what` otherwise."""
    for pattern, code, indent in edits:
        matches = list(re.finditer(pattern, text))
        if len(matches) != 1:
            raise InstallError(f"{name}: not Caffe's file as faceops knows it (no single match "
                               f"of {pattern!r}): cannot add {what}")
        at = matches[0].end()
        text = text[:at] + "".join(f"{indent}{line}\n" for line in [BEGIN, *code, END]) + text[at:]
    return text


_FIELDS_INCLUDE = '#include "caffe/util/faceops_caffe_fields.hpp"'


def patch_scale(text, device, name):
    """scale_layer.{cpp,cu}: scale_param { min_value max_value } clamp the scale."""
    return _insert(text, name, "scale_param.min_value / max_value", [
        (r'#include "caffe/layers/scale_layer.hpp"\n', [_FIELDS_INCLUDE], ""),
        (r"ScaleLayer<Dtype>::Forward_%s\([^)]*\)\s*\{\n" % device,
         ["FaceopsClampScale(this->layer_param_, "
          "bottom.size() > 1 ? bottom[1] : this->blobs_[0].get());"], "  ")])


def patch_accuracy(text, device, name):
    """accuracy_layer.{cpp,cu}: accuracy_param { min_is_better: true }."""
    return _insert(text, name, "accuracy_param.min_is_better", [
        (r'#include "caffe/layers/accuracy_layer.hpp"\n', [_FIELDS_INCLUDE], ""),
        (r"AccuracyLayer<Dtype>::Forward_%s\([^)]*\)\s*\{\n" % device,
         ["if (this->layer_param_.accuracy_param().min_is_better()) {",
          "  FaceopsAccuracyMinIsBetter(bottom, top, top_k_, has_ignore_label_,",
          "      has_ignore_label_ ? ignore_label_ : 0, label_axis_);",
          "  return;",
          "}"], "  ")])


def patch_softmax_loss(text, device, name):
    """softmax_loss_layer.cpp: softmax_param.normalize_type other than "Softmax" refused."""
    return _insert(text, name, "softmax_param.normalize_type", [
        (r'#include "caffe/layers/softmax_loss_layer.hpp"\n', [_FIELDS_INCLUDE], ""),
        (r"SoftmaxWithLossLayer<Dtype>::LayerSetUp\([^)]*\)\s*\{\n\s*LossLayer<Dtype>::LayerSetUp\(bottom, top\);\n",
         ["FaceopsCheckSoftmaxNormalizeType(this->layer_param_);"], "  ")])


def patch_parameter(text, device, name):
    """parameter_layer.hpp: parameter_param { blob_filler } fills the blob."""
    return _insert(text, name, "parameter_param.blob_filler", [
        (r'#include "caffe/layer.hpp"\n', [_FIELDS_INCLUDE], ""),
        (r"this->blobs_\[0\]->Reshape\(this->layer_param_\.parameter_param\(\)\.shape\(\)\);\n",
         ["FaceopsFillParameter(this->layer_param_, this->blobs_[0].get());"], "      ")])


def patch_filler(text, device, name):
    """filler.hpp: the `gaussian_unitball` filler in GetFiller."""
    return _insert(text, name, 'the "gaussian_unitball" filler', [
        (r"\n(?=template <typename Dtype>\nFiller<Dtype>\* GetFiller\()",
         ["template <typename Dtype> class FaceopsGaussianUnitBallFiller;"], ""),
        (r"return new BilinearFiller<Dtype>\(param\);\n",
         ['} else if (type == "gaussian_unitball") {',
          "  return new FaceopsGaussianUnitBallFiller<Dtype>(param);"], "  "),
        (r"\n(?=#endif  // CAFFE_FILLER_HPP)",
         ['#include "caffe/util/faceops_fillers.hpp"'], "")])


# {Caffe file: (patch, device)}: calls into faceops inserted between marker
# comments (uninstall removes the marked blocks).
SOURCE_PATCHES = {
    Path("src/caffe/layers/inner_product_layer.cpp"): (patch_inner_product, "cpu"),
    Path("src/caffe/layers/inner_product_layer.cu"): (patch_inner_product, "gpu"),
    Path("include/caffe/layers/inner_product_layer.hpp"): (patch_inner_product_header, None),
    Path("src/caffe/layers/softmax_loss_layer.cpp"): (patch_softmax_loss, None),
    Path("src/caffe/layers/scale_layer.cpp"): (patch_scale, "cpu"),
    Path("src/caffe/layers/scale_layer.cu"): (patch_scale, "gpu"),
    Path("src/caffe/layers/accuracy_layer.cpp"): (patch_accuracy, "cpu"),
    Path("src/caffe/layers/accuracy_layer.cu"): (patch_accuracy, "gpu"),
    Path("include/caffe/layers/parameter_layer.hpp"): (patch_parameter, None),
    Path("include/caffe/filler.hpp"): (patch_filler, None),
}


def _read_manifest(caffe_root):
    path = caffe_root / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"files": []}


def install(caffe_root, faceops_root=None, first_field_id=DEFAULT_FIRST_FIELD_ID, log=print):
    """Installs into caffe_root; returns True when something changed."""
    caffe_root = Path(caffe_root)
    faceops_root = Path(faceops_root) if faceops_root else default_faceops_root()
    files = sources(faceops_root)
    proto = caffe_root / PROTO
    if not proto.is_file():
        raise InstallError(f"{caffe_root} is not a Caffe source tree: no {PROTO}")
    owned = set(_read_manifest(caffe_root)["files"])
    for destination, source in files.items():
        target = caffe_root / destination
        if target.exists() and str(destination) not in owned and target.read_bytes() != source.read_bytes():
            raise InstallError(
                f"{target} exists and was not installed by faceops (another layer of that name?): "
                "remove it first"
            )

    # Its first paragraph documents the fragment itself and is not copied.
    fragment = (faceops_root / "caffe_layers/proto/faceops_layers.proto").read_text().split("\n\n", 1)[1]
    old_proto = proto.read_text()
    new_proto = patch_proto(unpatch_proto(old_proto), fragment, first_field_id)
    changed = []
    patched = {}
    for path, (patch, device) in SOURCE_PATCHES.items():
        old = (caffe_root / path).read_text()
        patched[path] = (old, patch(unpatch_proto(old), device, path))
    if new_proto != old_proto:
        proto.write_text(new_proto)
        changed.append(PROTO)
    for path, (old, new) in patched.items():
        if new != old:
            (caffe_root / path).write_text(new)
            changed.append(path)
    for destination, source in files.items():
        target = caffe_root / destination
        if not target.exists() or target.read_bytes() != source.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            changed.append(destination)
    for stale in sorted(owned - {str(d) for d in files}):
        (caffe_root / stale).unlink(missing_ok=True)
        changed.append(Path(stale))
    manifest = {"first_field_id": first_field_id, "files": sorted(str(d) for d in files),
                "patched": sorted(str(p) for p in SOURCE_PATCHES)}
    if _read_manifest(caffe_root) != manifest:
        (caffe_root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    if not changed:
        log(f"faceops layers already installed in {caffe_root}; nothing changed")
        return False
    log(f"faceops layers installed in {caffe_root} ({len(changed)} files written or removed), "
        f"LayerParameter ids {first_field_id}-{first_field_id + len(LAYER_FIELDS) - 1}.")
    log(_REBUILD.format(why=", caffe.proto changed: most of Caffe recompiles" if PROTO in changed else ""))
    return True


def uninstall(caffe_root, log=print):
    """Removes what install wrote; returns True when something changed."""
    caffe_root = Path(caffe_root)
    proto = caffe_root / PROTO
    manifest = _read_manifest(caffe_root)
    changed = False
    if proto.is_file():
        text = proto.read_text()
        if unpatch_proto(text) != text:
            proto.write_text(unpatch_proto(text))
            changed = True
    for path in manifest.get("patched", []):
        target = caffe_root / path
        if target.is_file() and unpatch_proto(target.read_text()) != target.read_text():
            target.write_text(unpatch_proto(target.read_text()))
            changed = True
    for destination in manifest["files"]:
        target = caffe_root / destination
        if target.exists():
            target.unlink()
            changed = True
    for directory in (CORE_HEADERS, CORE_SOURCES):
        if (caffe_root / directory).is_dir() and not any((caffe_root / directory).iterdir()):
            (caffe_root / directory).rmdir()
    (caffe_root / MANIFEST).unlink(missing_ok=True)
    log(f"faceops layers removed from {caffe_root}." if changed else
        f"faceops layers were not installed in {caffe_root}; nothing changed")
    if changed:
        log(_REBUILD.format(why=", caffe.proto changed: most of Caffe recompiles"))
    return changed


_REBUILD = """Rebuild Caffe{why}.
  CMake:    re-run cmake in your build directory (sources are globbed; add -DUSE_OPENMP=ON,
            the faceops core uses OpenMP), then: make caffe pycaffe (and test.testbin, runtest)
  Makefile: add -fopenmp to CXXFLAGS and LINKFLAGS, then: make all pycaffe (and test, runtest)"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m faceops.caffe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("install", "uninstall"):
        command = commands.add_parser(name)
        command.add_argument("--caffe-root", required=True, type=Path, help="the Caffe source tree")
    commands.choices["install"].add_argument(
        "--first-field-id", type=int, default=DEFAULT_FIRST_FIELD_ID,
        help="LayerParameter id of center_loss_param; the next ids follow (default %(default)s)")
    commands.choices["install"].add_argument(
        "--faceops-root", type=Path, default=None,
        help="the faceops source checkout to copy from (default: the one this file is in)")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(args.caffe_root, args.faceops_root, args.first_field_id)
        else:
            uninstall(args.caffe_root)
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
