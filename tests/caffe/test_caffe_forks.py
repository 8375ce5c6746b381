"""The forks' training prototxts as users run them (issue 14): for each fork
prototxt in caffe_layers/README.md's table, a net of our own with the same
layer types and fields (never the fork's file), trained by the real `caffe
train` tool with a solver, reading ORL faces (../shared/data) through
ImageData (a list file written here) or a Data layer over an LMDB or LevelDB
written here by Caffe's convert_imageset.  Each run must stay finite and
the loss must go down.  The `caffe` fixture (pycaffe of the same build, with
the faceops layers) gates them: they skip, or fail under
FACEOPS_REQUIRE_CAFFE=1, where that build is missing or stale."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import CAFFE_DIR, require

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("FACEOPS_SHARED_DATA", REPO.parent / "shared" / "data"))
ORL = DATA / "orl_faces"
SUBJECTS, HEIGHT, WIDTH, BATCH = 8, 28, 24, 16
TOOLS = CAFFE_DIR / "build" / "tools"

IMAGE_DATA = """
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mean_value: 128 scale: 0.0078125 mirror: true }
  image_data_param { source: "%(list)s" root_folder: "%(root)s" batch_size: %(batch)d shuffle: true
    new_height: %(height)d new_width: %(width)d is_color: false } }
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }
  transform_param { mean_value: 128 scale: 0.0078125 }
  image_data_param { source: "%(list)s" root_folder: "%(root)s" batch_size: %(batch)d
    new_height: %(height)d new_width: %(width)d is_color: false } }
"""
DATA_LAYER = """
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mean_value: 128 scale: 0.0078125 mirror: true }
  data_param { source: "%(train)s" backend: %(backend)s batch_size: %(batch)d } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mean_value: 128 scale: 0.0078125 }
  data_param { source: "%(test)s" backend: %(backend)s batch_size: %(batch)d } }
"""
# A small residual trunk in the forks' style (PReLU, Eltwise sum, fc5).
TRUNK = """
layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0 } } }
layer { name: "relu1_1" type: "PReLU" bottom: "conv1_1" top: "conv1_1" }
layer { name: "conv1_2" type: "Convolution" bottom: "conv1_1" top: "conv1_2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 0 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 stride: 1 pad: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "relu1_2" type: "PReLU" bottom: "conv1_2" top: "conv1_2" }
layer { name: "res1_2" type: "Eltwise" bottom: "conv1_1" bottom: "conv1_2" top: "res1_2"
  eltwise_param { operation: 1 } }
layer { name: "fc5" type: "InnerProduct" bottom: "res1_2" top: "fc5"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 32 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0 } } }
"""
ACCURACY = """
layer { name: "accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""
# happynear/AMSoftmax prototxt/face_train_test.prototxt: Normalize, the
# forks' normalised InnerProduct, LabelSpecificAdd with a fixed bias, Scale.
AM_SOFTMAX = TRUNK + """
layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" }
layer { name: "fc6_l2" type: "InnerProduct" bottom: "norm1" top: "fc6" param { lr_mult: 1 }
  inner_product_param { num_output: %(classes)d normalize: true weight_filler { type: "xavier" }
    bias_term: false } }
layer { name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label"
  top: "fc6_margin" label_specific_add_param { bias: -0.35 } }
layer { name: "fc6_margin_scale" type: "Scale" bottom: "fc6_margin" top: "fc6_margin_scale"
  param { lr_mult: 0 decay_mult: 0 } scale_param { filler { type: "constant" value: 30 } } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin_scale" bottom: "label"
  top: "softmax_loss" loss_weight: 1 }
""" + ACCURACY
# gehaocool/CombinedMargin-caffe example.prototxt: AM-Softmax's stack with
# CombinedMargin in place of LabelSpecificAdd.
COMBINED_MARGIN = AM_SOFTMAX.replace(
    """layer { name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label"
  top: "fc6_margin" label_specific_add_param { bias: -0.35 } }""",
    """layer { name: "combined_margin" type: "CombinedMargin" bottom: "fc6" bottom: "label"
  top: "fc6_margin" combined_margin_param { m1: 1 m2: 0 m3: 0.35 } }""")
assert "CombinedMargin" in COMBINED_MARGIN
# happynear/AMSoftmax prototxt/face_train_test_wo_fn.prototxt: Normalize with
# the norms top and bp_norm, LabelSpecificAdd with two tops and bias
# annealing, ChannelScale by the feature norms.
AM_SOFTMAX_WO_FN = TRUNK + """
layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" top: "feature_norm"
  normalize_param { bp_norm: true } }
layer { name: "fc6_l2" type: "InnerProduct" bottom: "norm1" top: "fc6" param { lr_mult: 1 }
  inner_product_param { num_output: %(classes)d normalize: true weight_filler { type: "xavier" }
    bias_term: false } }
layer { name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label"
  top: "fc6_margin" top: "margin"
  label_specific_add_param { iteration: 0 bias_base: 0 bias_gamma: -0.001 bias_power: 1
    bias_min: -0.2 bias_max: 0 } }
layer { name: "fc6_margin_scale" type: "ChannelScale" bottom: "fc6_margin" bottom: "feature_norm"
  top: "fc6_margin_scale" }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin_scale" bottom: "label"
  top: "softmax_loss" loss_weight: 1 }
""" + ACCURACY
# happynear/AMSoftmax prototxt/auto/face_train_test_auto.prototxt: the margin
# estimated by GlobalLSEMargin (its statistics top, a net output), a learned
# scale, SoftmaxWithLoss with caffe-windows' normalize_type, Accuracy with
# min_is_better: false.
AM_SOFTMAX_AUTO = TRUNK + """
layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" normalize_param { bp_norm: true } }
layer { name: "fc6" type: "InnerProduct" bottom: "norm1" top: "fc6"
  inner_product_param { num_output: %(classes)d normalize: true weight_filler { type: "xavier" }
    bias_term: false } }
layer { name: "margin" type: "GlobalLSEMargin" bottom: "fc6" bottom: "label" top: "fc6_margin"
  top: "statistics" }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin" bottom: "label"
  top: "softmax_loss" loss_weight: 1 softmax_param { normalize_type: "Softmax" } }
layer { name: "Accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "accuracy"
  include { phase: TEST } accuracy_param { min_is_better: false } }
"""
# wy1iu/sphereface train/code/sphereface_model.prototxt (and
# sphereface_64_model.prototxt): MarginInnerProduct QUADRUPLE with its lambda
# annealing and the lambda top.
SPHEREFACE = TRUNK + """
layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6"
  top: "lambda" param { lr_mult: 1 decay_mult: 1 }
  margin_inner_product_param { num_output: %(classes)d type: QUADRUPLE
    weight_filler { type: "xavier" } base: 1000 gamma: 2 power: 1 lambda_min: 5
    iteration: 0 } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label"
  top: "softmax_loss" }
""" + ACCURACY
# xialuxi/arcface-caffe cosin_add_m.prototxt: Normalize with bp_norm, the
# normalised InnerProduct, CosinAddm, Scale, FocalLoss (type ORIGIN gamma alpha
# beta), Accuracy layers in the TRAIN phase, over a Data layer.
ARCFACE_FOCAL = TRUNK + """
layer { name: "norm_fc5" type: "Normalize" bottom: "fc5" top: "norm_fc5"
  normalize_param { bp_norm: true } }
layer { name: "fc6" type: "InnerProduct" bottom: "norm_fc5" top: "fc6" param { lr_mult: 1 }
  inner_product_param { num_output: %(classes)d normalize: true weight_filler { type: "xavier" }
    bias_term: false } }
layer { name: "cosin_add_m" type: "CosinAddm" bottom: "fc6" bottom: "label" top: "fc6_margin"
  cosin_add_m_param { m: 0.5 } }
layer { name: "fc6_margin_scale" type: "Scale" bottom: "fc6_margin" top: "fc6_margin_scale"
  param { lr_mult: 0 decay_mult: 0 } scale_param { filler { type: "constant" value: 16 } } }
layer { name: "focal_loss" type: "FocalLoss" bottom: "fc6_margin_scale" bottom: "label"
  top: "focal_loss" focal_loss_param: { type: ORIGIN gamma: 2 alpha: 0.25 beta: 1 }
  loss_weight: 1 }
layer { name: "accuracy-t" type: "Accuracy" bottom: "fc6" bottom: "label" top: "accuracy-t"
  include { phase: TRAIN } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc6_margin_scale" bottom: "label"
  top: "accuracy" include { phase: TRAIN } }
"""
# xialuxi/arcface-caffe AdaCos/adacos_add_m_scale.prototxt: NormL2, the
# normalised InnerProduct, AdaCosAddmScale { m num_classes }, SoftmaxWithLoss.
ADACOS = TRUNK + """
layer { name: "norm_fc5" type: "NormL2" bottom: "fc5" top: "norm_fc5" }
layer { name: "fc6" type: "InnerProduct" bottom: "norm_fc5" top: "fc6" param { lr_mult: 1 }
  inner_product_param { num_output: %(classes)d normalize: true weight_filler { type: "xavier" }
    bias_term: false } }
layer { name: "adacos_add_m_scale" type: "AdaCosAddmScale" bottom: "fc6" bottom: "label"
  top: "fc6_margin_scale" adacos_add_m_scale_param { m: 0.5 num_classes: %(classes)d } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin_scale" bottom: "label"
  top: "softmax_loss" loss_weight: 1 }
layer { name: "accuracy-t" type: "Accuracy" bottom: "fc6" bottom: "label" top: "accuracy-t"
  include { phase: TRAIN } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc6_margin_scale" bottom: "label"
  top: "accuracy" include { phase: TRAIN } }
"""
# gehaocool/CombinedMargin-caffe's spherenet36 prototxt sets NetParameter's
# mem_param (a memory optimisation: parsed, ignored) and transform_param
# augmentation fields of another fork (not parsed: refused by protobuf).
MEM_PARAM = """mem_param { optimize_train: true optimize_test: true exclude_blob: "fc5" }
"""
# ydwen/caffe-face face_example/face_train_test.prototxt: softmax plus
# CenterLoss on fc5; as a native layer, or as the faceops Python layer that
# the caffe binary's embedded Python imports (PYTHONPATH, see the README).
CENTER_LOSS = """
layer { name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "center_loss"
  param { lr_mult: 1 decay_mult: 2 }
  center_loss_param { num_output: %(classes)d center_filler { type: "xavier" } }
  loss_weight: 0.008 }
"""
PYTHON_CENTER_LOSS = """
layer { name: "center_loss" type: "Python" bottom: "fc5" bottom: "label" top: "center_loss"
  param { lr_mult: 1 decay_mult: 2 }
  python_param { module: "faceops.caffe.layers" layer: "CenterLoss"
                 param_str: "{'num_output': %(classes)d, 'center_filler': 'xavier'}" }
  loss_weight: 0.008 }
"""
CAFFE_FACE = TRUNK + """
layer { name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: %(classes)d weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0 } } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label"
  top: "softmax_loss" }
""" + ACCURACY
# happynear/NormFace prototxt/scaled_cosine_softmax.prototxt: Normalize, the
# normalised InnerProduct with the gaussian_unitball filler, a learned Scale
# bounded below by min_value, Accuracy with min_is_better: false.
NORMFACE_SCALED_COSINE = TRUNK + """
layer { name: "normalize1" type: "Normalize" bottom: "fc5" top: "norm1" }
layer { name: "cosine_layer" type: "InnerProduct" bottom: "norm1" top: "cosine"
  param { lr_mult: 100 decay_mult: 0 }
  inner_product_param { bias_term: false normalize: true num_output: %(classes)d
    weight_filler { type: "gaussian_unitball" } } }
layer { name: "cosine_scale" type: "Scale" bottom: "cosine" top: "cosine"
  scale_param { num_axes: 0 bias_term: false min_value: 0.01 filler { value: 10 }
    bias_filler { value: 0 } } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "cosine" bottom: "label"
  top: "softmax_loss" loss_weight: 1 }
layer { name: "Accuracy" type: "Accuracy" bottom: "cosine" bottom: "label" top: "accuracy"
  include { phase: TEST } accuracy_param { min_is_better: false } }
"""
# happynear/NormFace prototxt/normalized_Euclidean_contrastive.prototxt:
# InnerDistance with its own normalised centres (gaussian_unitball, lr_mult
# 100), GeneralContrastiveLoss with two tops, Accuracy on the distances.
NORMFACE_EUCLIDEAN_CONTRASTIVE = TRUNK + """
layer { name: "normalize1" type: "Normalize" bottom: "fc5" top: "norm1" }
layer { name: "normalized_Euclidean" type: "InnerDistance" bottom: "norm1"
  top: "normalized_Euclidean" param { lr_mult: 100 decay_mult: 0 }
  inner_distance_param { bias_term: false distance_type: "L2" normalize: true
    num_output: %(classes)d weight_filler { type: "gaussian_unitball" } } }
layer { name: "contrastive_loss" type: "GeneralContrastiveLoss" bottom: "normalized_Euclidean"
  bottom: "label" top: "contrastive_loss" top: "mean_distance" loss_weight: 1 loss_weight: 1
  general_contrastive_loss_param { positive_margin: 0 negative_margin: 1 negative_weight: 1
    exp_negative_weight: false } }
layer { name: "Accuracy" type: "Accuracy" bottom: "normalized_Euclidean" bottom: "label"
  top: "accuracy" include { phase: TEST } accuracy_param { min_is_better: true } }
"""
# happynear/NormFace prototxt/normalized_Euclidean_triplet.prototxt: centres
# from a Parameter layer through Normalize, InnerDistance with the weight as
# bottom[1], GeneralTripletLoss (hardest_only, add_center_loss) with two tops.
NORMFACE_EUCLIDEAN_TRIPLET = TRUNK + """
layer { name: "normalize1" type: "Normalize" bottom: "fc5" top: "norm1" }
layer { name: "id_weight_l2" type: "Parameter" top: "id_weight_l2" param { lr_mult: 1 decay_mult: 0 }
  parameter_param { shape { dim: %(classes)d dim: 32 } blob_filler { type: "gaussian_unitball" } } }
layer { name: "id_weight_l2_normalize" type: "Normalize" bottom: "id_weight_l2"
  top: "id_weight_l2_normalize" }
layer { name: "normalized_Euclidean" type: "InnerDistance" bottom: "norm1"
  bottom: "id_weight_l2_normalize" top: "normalized_Euclidean"
  inner_distance_param { bias_term: false distance_type: "L2" } }
layer { name: "triplet_loss" type: "GeneralTripletLoss" bottom: "normalized_Euclidean"
  bottom: "label" top: "contrastive_loss" top: "mean_distance" loss_weight: 1 loss_weight: 1
  general_triplet_loss_param { margin: 0.8 add_center_loss: true hardest_only: true
    negative_weight: 1 } }
layer { name: "Accuracy" type: "Accuracy" bottom: "normalized_Euclidean" bottom: "label"
  top: "accuracy" include { phase: TEST } accuracy_param { min_is_better: true } }
"""
# happynear/NormFace mnist/lenet_train_test.prototxt (over an LMDB): a
# 3-d embedding, class centres from a Parameter layer (gaussian_unitball
# blob_filler) normalised by Normalize, InnerDistance to them, Accuracy on
# the distances (min_is_better), GeneralContrastiveLoss with its second top
# (loss_weight 1 on both) and the general_triplet_loss_param it does not read.
# ip1's `gaussian` filler with `value` (not std) is the fork's: std stays 1.
NORMFACE_MNIST = TRUNK + """
layer { name: "ip1" type: "InnerProduct" bottom: "fc5" top: "ip1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" value: 0.01 }
    bias_filler { type: "constant" value: 0 } } }
layer { name: "normalize1" type: "Normalize" bottom: "ip1" top: "norm1"
  normalize_param { normalize_type: "L2" } }
layer { name: "id_weight" type: "Parameter" top: "id_weight" param { lr_mult: 1 decay_mult: 1 }
  parameter_param { shape { dim: %(classes)d dim: 3 } blob_filler { type: "gaussian_unitball" } } }
layer { name: "id_weight_normalize" type: "Normalize" bottom: "id_weight"
  top: "id_weight_normalize" normalize_param { normalize_type: "L2" } }
layer { name: "ip2" type: "InnerDistance" bottom: "norm1" bottom: "id_weight_normalize" top: "ip2" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  accuracy_param { min_is_better: true } }
layer { name: "loss" type: "GeneralContrastiveLoss" bottom: "ip2" bottom: "label"
  top: "loss" top: "mean_distance" loss_weight: 1 loss_weight: 1
  general_contrastive_loss_param { positive_margin: 0 negative_margin: 1 negative_weight: 1
    square: false max_negative_only: false max_positive_only: false add_intra_mae: false }
  general_triplet_loss_param { margin: 1 add_center_loss: true hardest_only: true
    negative_weight: 1 positive_first: false positive_upper_bound: 1 } }
"""
# happynear/NormFace prototxt/combine_softmax_contrastive.prototxt (a head
# without data layers; here on TRUNK): two Parameter blobs through Normalize,
# one for InnerDistance + GeneralContrastiveLoss, one as InnerProduct's weight
# bottom[1] + Scale + SoftmaxWithLoss with normalize_type.  The fork's file
# gives its InnerDistance `inner_product_param { bias_term distance_type }`,
# which no caffe-windows version can parse (InnerProductParameter has no
# distance_type); here that layer has the inner_distance_param it reads.
NORMFACE_COMBINE = TRUNK + """
layer { name: "normalize1" type: "Normalize" bottom: "fc5" top: "norm1" }
layer { name: "id_weight_l2" type: "Parameter" top: "id_weight_l2" param { lr_mult: 1 decay_mult: 1 }
  parameter_param { shape { dim: %(classes)d dim: 32 } blob_filler { type: "gaussian_unitball" } } }
layer { name: "id_weight_l2_normalize" type: "Normalize" bottom: "id_weight_l2"
  top: "id_weight_l2_normalize" }
layer { name: "id_weight_ip" type: "Parameter" top: "id_weight_ip" param { lr_mult: 1 decay_mult: 1 }
  parameter_param { shape { dim: %(classes)d dim: 32 } blob_filler { type: "gaussian_unitball" } } }
layer { name: "id_weight_ip_normalize" type: "Normalize" bottom: "id_weight_ip"
  top: "id_weight_ip_normalize" }
layer { name: "euclidean" type: "InnerDistance" bottom: "norm1" bottom: "id_weight_l2_normalize"
  top: "euclidean" inner_distance_param { bias_term: false distance_type: "L2" } }
layer { name: "cosine" type: "InnerProduct" bottom: "norm1" bottom: "id_weight_ip_normalize"
  top: "cosine" inner_product_param { bias_term: false } }
layer { name: "cosine_scale" type: "Scale" bottom: "cosine" top: "cosine"
  scale_param { num_axes: 0 bias_term: false filler { value: 4 } bias_filler { value: 0 } } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "cosine" bottom: "label"
  top: "softmax_loss" loss_weight: 1 softmax_param { normalize_type: "Softmax" } }
layer { name: "contrastive_loss" type: "GeneralContrastiveLoss" bottom: "euclidean" bottom: "label"
  top: "contrastive_loss" top: "mean_distance" loss_weight: 0.01 loss_weight: 1
  general_contrastive_loss_param { positive_margin: 0 negative_margin: 1 negative_weight: 1
    exp_negative_weight: false } }
layer { name: "Accuracy" type: "Accuracy" bottom: "cosine" bottom: "label" top: "accuracy"
  include { phase: TEST } accuracy_param { min_is_better: false } }
"""
# happynear/NormFace prototxt/example_of_mirror_face.prototxt, a deploy net:
# Input, Flip (its defaults: flip_width), the batch and its mirror images
# concatenated, Max-Feature-Map blocks (Slice + Eltwise MAX), the features of
# each face and of its mirror image combined by an element-wise max.  The
# second Flip has explicit fields (the other axis).
MIRROR_FACE = """
layer { name: "input" type: "Input" top: "data"
  input_param { shape { dim: 4 dim: 1 dim: %(height)d dim: %(width)d } } }
layer { name: "flip_data" type: "Flip" bottom: "data" top: "flip_data" }
layer { name: "flip_height" type: "Flip" bottom: "data" top: "flip_height"
  flip_param { flip_width: false flip_height: true } }
layer { name: "concat_data" type: "Concat" bottom: "data" bottom: "flip_data" top: "concat_data"
  concat_param { axis: 0 } }
layer { name: "conv1" type: "Convolution" bottom: "concat_data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 pad: 2 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "slice1" type: "Slice" bottom: "conv1" top: "slice1_1" top: "slice1_2"
  slice_param { slice_dim: 1 } }
layer { name: "etlwise1" type: "Eltwise" bottom: "slice1_1" bottom: "slice1_2" top: "eltwise1"
  eltwise_param { operation: MAX } }
layer { name: "pool1" type: "Pooling" bottom: "eltwise1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 16 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "slice_fc1" type: "Slice" bottom: "fc1" top: "slice_fc1_1" top: "slice_fc1_2"
  slice_param { slice_dim: 1 } }
layer { name: "etlwise_fc1" type: "Eltwise" bottom: "slice_fc1_1" bottom: "slice_fc1_2"
  top: "eltwise_fc1" eltwise_param { operation: MAX } }
layer { name: "slice_eltwise_fc1" type: "Slice" bottom: "eltwise_fc1" top: "eltwise_fc1_orig"
  top: "eltwise_fc1_mirror" slice_param { axis: 0 } }
layer { name: "eltmax_eltwise_fc1" type: "Eltwise" bottom: "eltwise_fc1_orig"
  bottom: "eltwise_fc1_mirror" top: "eltmax_eltwise_fc1" eltwise_param { operation: MAX } }
"""
SOLVER = """
net: "%(net)s"
test_iter: 2
test_interval: 150
test_initialization: false
base_lr: %(lr)g
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 25
average_loss: 25
max_iter: 300
snapshot_after_train: false
random_seed: 1701
solver_mode: CPU
"""
LOSS = re.compile(r"Iteration (\d+) .*, loss = (\S+)")


def _tool(name):
    path = TOOLS / name
    if not path.is_file():
        require(f"no {path}: run .ci/build_caffe.sh (it builds the caffe tool and convert_imageset)")
    return path


def _faces(tmp_path):
    """A list file (outside ../shared) of SUBJECTS ORL subjects, 10 images each."""
    if not ORL.is_dir():
        require(f"ORL faces not found at {ORL} (../shared/data beside the repo, or FACEOPS_SHARED_DATA)")
    lines = [f"s{subject}/{image}.pgm {subject - 1}"
             for subject in range(1, SUBJECTS + 1) for image in range(1, 11)]
    listing = tmp_path / "faces.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def _run_caffe_train(tmp_path, text, lr, python_path=None, name="train"):
    """Runs `caffe train` on the net `text`; returns the finished process."""
    net_path, solver_path = tmp_path / f"{name}.prototxt", tmp_path / f"{name}_solver.prototxt"
    net_path.write_text(text)
    solver_path.write_text(SOLVER % {"net": net_path, "lr": lr})
    env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0")
    env.pop("PYTHONPATH", None)
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in python_path)
    return subprocess.run([str(_tool("caffe")), "train", f"--solver={solver_path}"], env=env,
                          capture_output=True, text=True, timeout=300)


def _train(tmp_path, data, net, lr, python_path=None, header="", name="train"):
    """Runs `caffe train`; returns [(iteration, displayed loss)]."""
    run = _run_caffe_train(tmp_path, header + data + net % {"classes": SUBJECTS}, lr,
                           python_path, name)
    assert run.returncode == 0, run.stderr[-3000:]
    losses = [(int(i), float(loss)) for i, loss in LOSS.findall(run.stderr)]
    assert losses and losses[-1][0] >= 275, run.stderr[-3000:]
    assert "Test net output" in run.stderr, run.stderr[-3000:]  # the TEST phase ran too
    return losses


def _assert_learns(losses):
    values = np.array([loss for _, loss in losses])
    assert np.isfinite(values).all(), losses
    # The mean over iterations 275-299 against the first displayed loss.
    assert values[-1] < 0.6 * values[0], losses


def _image_data(tmp_path):
    return IMAGE_DATA % {"list": _faces(tmp_path), "root": f"{ORL}/", "batch": BATCH,
                         "height": HEIGHT, "width": WIDTH}


def _database(tmp_path, backend):
    """LMDBs / LevelDBs of the faces written by Caffe's convert_imageset: one for the
    TRAIN net, one for the TEST net (a LevelDB is locked by the net that opens it)."""
    listing, dbs = _faces(tmp_path), {}
    for phase in ("train", "test"):
        dbs[phase] = tmp_path / f"faces_{backend}_{phase}"
        run = subprocess.run([str(_tool("convert_imageset")), "--gray", f"--resize_height={HEIGHT}",
                              f"--resize_width={WIDTH}", "--shuffle", f"--backend={backend}",
                              f"{ORL}/", str(listing), str(dbs[phase])],
                             env=dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0"),
                             capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"Processed {SUBJECTS * 10} files" in run.stderr, run.stderr[-2000:]
    return DATA_LAYER % {**dbs, "backend": backend.upper(), "batch": BATCH}


@pytest.mark.parametrize("net, lr", [(AM_SOFTMAX, 0.01), (SPHEREFACE, 0.01), (COMBINED_MARGIN, 0.01),
                                     (AM_SOFTMAX_AUTO, 0.01)],
                         ids=["AMSoftmax-face_train_test", "sphereface_model", "CombinedMargin-example",
                              "AMSoftmax-face_train_test_auto"])
def test_fork_net_trains_on_image_data(caffe, tmp_path, net, lr):
    _assert_learns(_train(tmp_path, _image_data(tmp_path), net, lr))


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_fork_net_trains_on_a_database(caffe, tmp_path, backend):
    _assert_learns(_train(tmp_path, _database(tmp_path, backend), AM_SOFTMAX_WO_FN, 0.01))


def test_caffe_face_trains_on_image_data(caffe, tmp_path):
    _assert_learns(_train(tmp_path, _image_data(tmp_path), CAFFE_FACE + CENTER_LOSS, 0.01))


def test_python_layer_in_the_caffe_binary(tmp_path, caffe):
    """The caffe binary's embedded Python finds faceops and pycaffe through PYTHONPATH
    (the site-packages faceops is installed in, and Caffe's python/)."""
    import faceops

    site = Path(faceops.__file__).resolve().parents[1]
    losses = _train(tmp_path, _image_data(tmp_path), CAFFE_FACE + PYTHON_CENTER_LOSS, 0.01,
                    python_path=[site, CAFFE_DIR / "src/python"])
    _assert_learns(losses)


@pytest.mark.parametrize("net", [ARCFACE_FOCAL, ADACOS], ids=["arcface-cosin_add_m", "arcface-adacos_add_m_scale"])
def test_arcface_caffe_net_trains_on_lmdb(caffe, tmp_path, net):
    _assert_learns(_train(tmp_path, _database(tmp_path, "lmdb"), net, 0.01))


def test_mem_param_parses_and_changes_nothing(caffe, tmp_path):
    """NetParameter.mem_param is accepted and ignored: the same seeded run gives
    the same displayed losses with and without it."""
    data = _image_data(tmp_path)
    plain = _train(tmp_path, data, COMBINED_MARGIN, 0.01, name="plain")
    with_mem_param = _train(tmp_path, data, COMBINED_MARGIN, 0.01, header=MEM_PARAM,
                            name="mem_param")
    assert with_mem_param == plain
    _assert_learns(with_mem_param)


def test_unsupported_fork_fields_stop_caffe_with_their_name(caffe, tmp_path):
    data = _image_data(tmp_path)
    augmented = data.replace("mirror: true", "mirror: true contrast_brightness_adjustment: true", 1)
    run = _run_caffe_train(tmp_path, augmented + COMBINED_MARGIN % {"classes": SUBJECTS}, 0.01,
                           name="augmented")
    assert run.returncode != 0
    assert 'no field named "contrast_brightness_adjustment"' in run.stderr, run.stderr[-2000:]
    linear = ARCFACE_FOCAL.replace("type: ORIGIN", "type: LINEAR")
    run = _run_caffe_train(tmp_path, data + linear % {"classes": SUBJECTS}, 0.01, name="linear")
    assert run.returncode != 0
    assert "FocalLoss layer 'focal_loss': focal_loss_param.type LINEAR is not supported" in run.stderr, \
        run.stderr[-2000:]
    # caffe-windows' "L2" replaces the softmax by a normalisation: refused, by name.
    l2 = AM_SOFTMAX_AUTO.replace('normalize_type: "Softmax"', 'normalize_type: "L2"')
    run = _run_caffe_train(tmp_path, data + l2 % {"classes": SUBJECTS}, 0.01, name="l2")
    assert run.returncode != 0
    assert ("SoftmaxWithLoss layer 'softmax_loss': softmax_param.normalize_type is \"L2\"; faceops "
            "supports only \"Softmax\"") in run.stderr, run.stderr[-2000:]
    # The fork's combine_softmax_contrastive line, which caffe-windows cannot parse either.
    fork_line = NORMFACE_COMBINE.replace('inner_distance_param { bias_term: false distance_type: "L2" }',
                                         'inner_product_param { bias_term: false distance_type: "L2" }')
    run = _run_caffe_train(tmp_path, data + fork_line % {"classes": SUBJECTS}, 0.01, name="fork_line")
    assert run.returncode != 0
    assert 'no field named "distance_type"' in run.stderr, run.stderr[-2000:]


TEST_ACCURACY = re.compile(r"Test net output #\d+: accuracy = (\S+)")


@pytest.mark.parametrize("net", [NORMFACE_SCALED_COSINE, NORMFACE_EUCLIDEAN_CONTRASTIVE,
                                 NORMFACE_EUCLIDEAN_TRIPLET, NORMFACE_COMBINE],
                         ids=["scaled_cosine_softmax", "normalized_Euclidean_contrastive",
                              "normalized_Euclidean_triplet", "combine_softmax_contrastive"])
def test_normface_net_trains_on_image_data(caffe, tmp_path, net):
    _assert_learns(_train(tmp_path, _image_data(tmp_path), net, 0.01))


def test_normface_mnist_net_trains_on_lmdb(caffe, tmp_path):
    run = _run_caffe_train(tmp_path, _database(tmp_path, "lmdb") + NORMFACE_MNIST % {"classes": SUBJECTS},
                           0.01)
    assert run.returncode == 0, run.stderr[-3000:]
    losses = [(int(i), float(loss)) for i, loss in LOSS.findall(run.stderr)]
    assert losses and losses[-1][0] >= 275, run.stderr[-3000:]
    _assert_learns(losses)
    # The nearest centre (min_is_better) is the subject for most test faces
    # (chance: 1 / 8).
    accuracies = [float(a) for a in TEST_ACCURACY.findall(run.stderr)]
    assert accuracies and accuracies[-1] > 0.5, run.stderr[-3000:]


def test_mirror_face_deploy_net_runs_forward(caffe, tmp_path):
    """NormFace's example_of_mirror_face (a deploy net): Flip mirrors each face as
    numpy does, and the features of a face and of its mirror image, max-combined,
    are the same for the mirrored input."""
    path = tmp_path / "mirror_face.prototxt"
    path.write_text(MIRROR_FACE % {"height": HEIGHT, "width": WIDTH})
    net = caffe.Net(str(path), caffe.TEST)
    faces = np.random.default_rng(0).standard_normal((4, 1, HEIGHT, WIDTH)).astype(np.float32)
    net.blobs["data"].data[...] = faces
    net.forward()
    np.testing.assert_array_equal(net.blobs["flip_data"].data, faces[:, :, :, ::-1])
    np.testing.assert_array_equal(net.blobs["flip_height"].data, faces[:, :, ::-1, :])
    np.testing.assert_array_equal(net.blobs["concat_data"].data[4:], faces[:, :, :, ::-1])
    features = net.blobs["eltmax_eltwise_fc1"].data.copy()
    assert features.shape == (4, 8) and np.isfinite(features).all()
    net.blobs["data"].data[...] = faces[:, :, :, ::-1]
    net.forward()
    np.testing.assert_allclose(net.blobs["eltmax_eltwise_fc1"].data, features, rtol=1e-5, atol=1e-6)
