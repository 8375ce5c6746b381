#include <cfloat>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/focal_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// The FocalLoss of xialuxi/arcface-caffe's prototxts:
// -alpha (1 - p)^gamma log p over a softmax, normalised as SoftmaxWithLoss.
template <typename TypeParam>
class FocalLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 6 samples of 5 logits, and a (2 x 3 x 2 x 1) spatial case (class axis 1).
  FocalLossLayerTest()
      : blob_bottom_data_(new Blob<Dtype>(6, 5, 1, 1)),
        blob_bottom_label_(new Blob<Dtype>(6, 1, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_std(2);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_data_);
    const Dtype labels[] = {0, 4, 2, 2, 1, 3};
    for (int i = 0; i < 6; ++i) blob_bottom_label_->mutable_cpu_data()[i] = labels[i];
    blob_bottom_vec_.push_back(blob_bottom_data_);
    blob_bottom_vec_.push_back(blob_bottom_label_);
    blob_top_vec_.push_back(blob_top_loss_);
    focal_ = layer_param_.mutable_focal_loss_param();
  }
  virtual ~FocalLossLayerTest() {
    delete blob_bottom_data_;
    delete blob_bottom_label_;
    delete blob_top_loss_;
  }

  // sum_i -alpha (1 - p_i)^gamma log p_i over the samples not ignored, in double.
  double ExpectedLossSum(double alpha, double gamma, int ignore, int* valid) {
    const Dtype* x = blob_bottom_data_->cpu_data();
    double loss = 0;
    *valid = 0;
    for (int i = 0; i < 6; ++i) {
      const int label = static_cast<int>(blob_bottom_label_->cpu_data()[i]);
      if (label == ignore) continue;
      double largest = x[i * 5], total = 0;
      for (int j = 0; j < 5; ++j) largest = std::max(largest, double(x[i * 5 + j]));
      for (int j = 0; j < 5; ++j) total += std::exp(x[i * 5 + j] - largest);
      const double p = std::exp(x[i * 5 + label] - largest) / total;
      loss += -alpha * std::pow(1 - p, gamma) * std::log(p);
      ++*valid;
    }
    return loss;
  }

  void CheckGradient(Layer<Dtype>* layer) {
    GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
    checker.CheckGradientExhaustive(layer, blob_bottom_vec_, blob_top_vec_, 0);
  }

  LayerParameter layer_param_;
  FocalLossParameter* focal_;
  Blob<Dtype>* const blob_bottom_data_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(FocalLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(FocalLossLayerTest, TestForwardDefaults) {
  typedef typename TypeParam::Dtype Dtype;
  FocalLossLayer<Dtype> layer(this->layer_param_);  // gamma 2, alpha 0.25
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  int valid;
  const double expected = this->ExpectedLossSum(0.25, 2, -1, &valid) / 6;
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0] / expected, 1.0, 1e-5);
}

// gamma 0, alpha 1: the softmax cross-entropy.
TYPED_TEST(FocalLossLayerTest, TestForwardGammaZero) {
  typedef typename TypeParam::Dtype Dtype;
  this->focal_->set_gamma(0);
  this->focal_->set_alpha(1);
  FocalLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  int valid;
  const double expected = this->ExpectedLossSum(1, 0, -1, &valid) / 6;
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0] / expected, 1.0, 1e-5);
}

TYPED_TEST(FocalLossLayerTest, TestForwardIgnoreLabel) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_loss_param()->set_ignore_label(2);
  FocalLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  int valid;
  const double expected = this->ExpectedLossSum(0.25, 2, 2, &valid) / valid;
  EXPECT_EQ(valid, 4);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0] / expected, 1.0, 1e-5);
}

TYPED_TEST(FocalLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.add_loss_weight(3);
  FocalLossLayer<Dtype> layer(this->layer_param_);
  this->CheckGradient(&layer);
}

TYPED_TEST(FocalLossLayerTest, TestGradientGammaHalfAlpha) {
  typedef typename TypeParam::Dtype Dtype;
  this->focal_->set_gamma(0.5);
  this->focal_->set_alpha(0.75);
  FocalLossLayer<Dtype> layer(this->layer_param_);
  this->CheckGradient(&layer);
}

TYPED_TEST(FocalLossLayerTest, TestGradientIgnoreLabelBatchSize) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_loss_param()->set_ignore_label(2);
  this->layer_param_.mutable_loss_param()->set_normalization(
      LossParameter_NormalizationMode_BATCH_SIZE);
  FocalLossLayer<Dtype> layer(this->layer_param_);
  this->CheckGradient(&layer);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  int valid;
  const double expected = this->ExpectedLossSum(0.25, 2, 2, &valid) / 6;
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0] / expected, 1.0, 1e-5);
}

// A target probability that underflows to 0: the loss is -alpha log FLT_MIN
// and the gradient finite (the fork's is NaN there): the target logit's
// diff is q (p - 1) with q = alpha.
TYPED_TEST(FocalLossLayerTest, TestUnderflowedTarget) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> data(1, 2, 1, 1), label(1, 1, 1, 1), loss;
  data.mutable_cpu_data()[0] = -1e4;
  data.mutable_cpu_data()[1] = 1e4;
  label.mutable_cpu_data()[0] = 0;
  vector<Blob<Dtype>*> bottom(1, &data), top(1, &loss);
  bottom.push_back(&label);
  FocalLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(bottom, top);
  layer.Forward(bottom, top);
  EXPECT_NEAR(loss.cpu_data()[0] / (-0.25 * std::log(FLT_MIN)), 1.0, 1e-5);
  vector<bool> propagate(2, true);
  propagate[1] = false;
  loss.mutable_cpu_diff()[0] = 1;
  layer.Backward(top, propagate, bottom);
  EXPECT_NEAR(data.cpu_diff()[0], -0.25, 1e-6);
  EXPECT_NEAR(data.cpu_diff()[1], 0.25, 1e-6);
}

}  // namespace caffe
