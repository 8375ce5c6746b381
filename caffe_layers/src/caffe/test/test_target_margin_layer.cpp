#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/target_margin_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// CombinedMargin (faceops' target_margin_forward/backward), CosinAddm and
// LabelSpecificAdd (their forks' own math, faceops/fork_margins.h).
template <typename TypeParam>
class TargetMarginLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 5 samples of 4 cosines in [-0.8, 0.9], away from +-1 where
  // d psi / d cos is unbounded.
  TargetMarginLayerTest()
      : blob_bottom_cosine_(new Blob<Dtype>(5, 4, 1, 1)),
        blob_bottom_label_(new Blob<Dtype>(5, 1, 1, 1)),
        blob_top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_min(-0.8);
    filler_param.set_max(0.9);
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_cosine_);
    const Dtype labels[] = {0, 3, 1, 1, 2};
    for (int i = 0; i < 5; ++i) {
      blob_bottom_label_->mutable_cpu_data()[i] = labels[i];
    }
    blob_bottom_vec_.push_back(blob_bottom_cosine_);
    blob_bottom_vec_.push_back(blob_bottom_label_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~TargetMarginLayerTest() {
    delete blob_bottom_cosine_;
    delete blob_bottom_label_;
    delete blob_top_;
  }

  // cos(m1 theta + m2) - m3 at the targets (m1 theta + m2 <= pi here), the
  // cosine elsewhere.
  void CheckForward(double m1, double m2, double m3) {
    for (int i = 0; i < 5; ++i) {
      const int label = static_cast<int>(blob_bottom_label_->cpu_data()[i]);
      for (int j = 0; j < 4; ++j) {
        const double c = blob_bottom_cosine_->cpu_data()[i * 4 + j];
        const double expected =
            j == label ? std::cos(m1 * std::acos(c) + m2) - m3 : c;
        EXPECT_NEAR(blob_top_->cpu_data()[i * 4 + j], expected, 1e-5)
            << "sample " << i << ", class " << j;
      }
    }
  }

  // The fork's LabelSpecificAdd: cos + bias at the targets where
  // cos > -bias, the cosine elsewhere.
  void CheckLabelSpecificAdd(double bias) {
    for (int i = 0; i < 5; ++i) {
      const int label = static_cast<int>(blob_bottom_label_->cpu_data()[i]);
      for (int j = 0; j < 4; ++j) {
        const double c = blob_bottom_cosine_->cpu_data()[i * 4 + j];
        const double expected = j == label && c > -bias ? c + bias : c;
        EXPECT_NEAR(blob_top_->cpu_data()[i * 4 + j], expected, 1e-6)
            << "sample " << i << ", class " << j << ", bias " << bias;
      }
    }
  }

  void CheckPassThrough() {
    for (int i = 0; i < 20; ++i) {
      EXPECT_EQ(blob_top_->cpu_data()[i], blob_bottom_cosine_->cpu_data()[i]);
    }
  }

  void CheckGradient(Layer<Dtype>* layer) {
    GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
    checker.CheckGradientExhaustive(layer, blob_bottom_vec_, blob_top_vec_,
        0);
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_cosine_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(TargetMarginLayerTest, TestDtypesAndDevices);

TYPED_TEST(TargetMarginLayerTest, TestCombinedMarginForward) {
  typedef typename TypeParam::Dtype Dtype;
  CombinedMarginParameter* param =
      this->layer_param_.mutable_combined_margin_param();
  param->set_m1(1.2);
  param->set_m2(0.3);
  param->set_m3(0.2);
  CombinedMarginLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->CheckForward(1.2, 0.3, 0.2);
}

TYPED_TEST(TargetMarginLayerTest, TestCombinedMarginGradient) {
  typedef typename TypeParam::Dtype Dtype;
  CombinedMarginParameter* param =
      this->layer_param_.mutable_combined_margin_param();
  param->set_m1(1.2);
  param->set_m2(0.3);
  param->set_m3(0.2);
  CombinedMarginLayer<Dtype> layer(this->layer_param_);
  this->CheckGradient(&layer);
}

// The fork's defaults, m1 = 4, m2 = 0.5, m3 = 0.35: most targets are past
// m1 theta + m2 = pi, where psi follows SphereFace's continuation.
TYPED_TEST(TargetMarginLayerTest, TestCombinedMarginDefaultsGradient) {
  typedef typename TypeParam::Dtype Dtype;
  CombinedMarginLayer<Dtype> layer(this->layer_param_);
  this->CheckGradient(&layer);
}

TYPED_TEST(TargetMarginLayerTest, TestCosinAddmForward) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_cosin_add_m_param()->set_m(0.5);
  CosinAddmLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->CheckForward(1, 0.5, 0);
}

TYPED_TEST(TargetMarginLayerTest, TestCosinAddmGradient) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_cosin_add_m_param()->set_m(0.5);
  CosinAddmLayer<Dtype> layer(this->layer_param_);
  this->CheckGradient(&layer);
}

// xialuxi/arcface-caffe's CPU code past the edges: a target "cosine" above 1
// is taken as 1 (top cos m) and passes its gradient with factor 1; at or
// below cos(pi - m) the top is c - m sin m, gradient factor 1.  Finite.
TYPED_TEST(TargetMarginLayerTest, TestCosinAddmEdgesAsFork) {
  typedef typename TypeParam::Dtype Dtype;
  const double m = 0.5;
  this->layer_param_.mutable_cosin_add_m_param()->set_m(m);
  Dtype* cosine = this->blob_bottom_cosine_->mutable_cpu_data();
  cosine[0 * 4 + 0] = 1.2;    // sample 0, target 0: above 1
  cosine[1 * 4 + 3] = -0.95;  // sample 1, target 3: below cos(pi - m)
  cosine[2 * 4 + 1] = 1;      // sample 2, target 1: exactly 1
  CosinAddmLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype* top = this->blob_top_->cpu_data();
  EXPECT_NEAR(top[0], std::cos(m), 1e-6);
  EXPECT_NEAR(top[7], -0.95 - m * std::sin(m), 1e-6);
  EXPECT_NEAR(top[9], std::cos(m), 1e-6);
  caffe_set(20, Dtype(2), this->blob_top_->mutable_cpu_diff());
  vector<bool> propagate_down(2, false);
  propagate_down[0] = true;
  layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  const Dtype* diff = this->blob_bottom_cosine_->cpu_diff();
  EXPECT_EQ(diff[0], Dtype(2));
  EXPECT_EQ(diff[7], Dtype(2));
  EXPECT_EQ(diff[9], Dtype(2));
  // Sample 3's target (class 1) is in the main branch: the exact derivative.
  const double c = cosine[3 * 4 + 1];
  EXPECT_NEAR(diff[13], 2 * (std::cos(m) + std::sin(m) * c /
      std::sqrt(1 - c * c)), 1e-4);
}

TYPED_TEST(TargetMarginLayerTest, TestLabelSpecificAddForward) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_label_specific_add_param()->set_bias(-0.35);
  LabelSpecificAddLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->CheckLabelSpecificAdd(-0.35);
}

// bias_base: the bias follows clamp(base + (1 + gamma t)^power - 1, min, max)
// over the forward passes t = 0, 1, ...; the second top reports it.
TYPED_TEST(TargetMarginLayerTest, TestLabelSpecificAddAnnealing) {
  typedef typename TypeParam::Dtype Dtype;
  LabelSpecificAddParameter* param =
      this->layer_param_.mutable_label_specific_add_param();
  param->set_bias_base(0.05);
  param->set_bias_gamma(-0.1);
  param->set_bias_power(2);
  param->set_bias_min(-0.4);
  param->set_bias_max(0);
  param->set_iteration(1);
  Blob<Dtype> bias_top;
  this->blob_top_vec_.push_back(&bias_top);
  LabelSpecificAddLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  for (int t = 1; t < 9; ++t) {
    layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
    const double expected = std::min(0.0, std::max(-0.4,
        0.05 + std::pow(1 - 0.1 * t, 2) - 1));
    EXPECT_NEAR(bias_top.cpu_data()[0], expected, 1e-6) << "t = " << t;
    this->CheckLabelSpecificAdd(expected);
  }
  EXPECT_NEAR(bias_top.cpu_data()[0], -0.4, 1e-6);  // clamped by t = 8
}

TYPED_TEST(TargetMarginLayerTest, TestLabelSpecificAddGradient) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_label_specific_add_param()->set_bias(-0.35);
  LabelSpecificAddLayer<Dtype> layer(this->layer_param_);
  this->CheckGradient(&layer);
}

// top = bottom[0]: the same top and the same bottom diff as out of place.
TYPED_TEST(TargetMarginLayerTest, TestInPlace) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_cosin_add_m_param()->set_m(0.5);
  CosinAddmLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  Blob<Dtype> top_diff(5, 4, 1, 1);
  filler.Fill(&top_diff);
  caffe_copy(20, top_diff.cpu_data(), this->blob_top_->mutable_cpu_diff());
  vector<bool> propagate_down(2, false);
  propagate_down[0] = true;
  layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  Blob<Dtype> expected;
  expected.CopyFrom(*this->blob_top_, false, true);
  Blob<Dtype> expected_diff;
  expected_diff.CopyFrom(*this->blob_bottom_cosine_, true, true);

  vector<Blob<Dtype>*> in_place(1, this->blob_bottom_cosine_);
  CosinAddmLayer<Dtype> in_place_layer(this->layer_param_);
  in_place_layer.SetUp(this->blob_bottom_vec_, in_place);
  in_place_layer.Forward(this->blob_bottom_vec_, in_place);
  caffe_copy(20, top_diff.cpu_data(),
      this->blob_bottom_cosine_->mutable_cpu_diff());
  in_place_layer.Backward(in_place, propagate_down, this->blob_bottom_vec_);
  for (int i = 0; i < 20; ++i) {
    EXPECT_NEAR(this->blob_bottom_cosine_->cpu_data()[i],
        expected.cpu_data()[i], 1e-6);
    EXPECT_NEAR(this->blob_bottom_cosine_->cpu_diff()[i],
        expected_diff.cpu_diff()[i], 1e-5);
  }
}

// In the TEST phase the cosines pass through unless transform_test is set.
TYPED_TEST(TargetMarginLayerTest, TestTestPhase) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.set_phase(TEST);
  this->layer_param_.mutable_label_specific_add_param()->set_bias(-0.35);
  {
    LabelSpecificAddLayer<Dtype> layer(this->layer_param_);
    layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
    layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
    this->CheckPassThrough();
  }
  this->layer_param_.mutable_label_specific_add_param()->set_transform_test(
      true);
  LabelSpecificAddLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->CheckLabelSpecificAdd(-0.35);
}

}  // namespace caffe
