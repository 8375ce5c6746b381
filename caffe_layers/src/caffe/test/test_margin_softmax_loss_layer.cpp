#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/margin_softmax_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class MarginSoftmaxLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 6 samples of 2 x 3 x 1 features, 5 classes; class 4 is not in the batch.
  MarginSoftmaxLossLayerTest()
      : blob_bottom_data_(new Blob<Dtype>(6, 2, 3, 1)),
        blob_bottom_label_(new Blob<Dtype>(6, 1, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_data_);
    const Dtype labels[] = {0, 1, 2, 3, 1, 0};
    for (int i = 0; i < 6; ++i) {
      blob_bottom_label_->mutable_cpu_data()[i] = labels[i];
    }
    blob_bottom_vec_.push_back(blob_bottom_data_);
    blob_bottom_vec_.push_back(blob_bottom_label_);
    blob_top_vec_.push_back(blob_top_loss_);
    MarginSoftmaxLossParameter* param =
        layer_param_.mutable_margin_softmax_loss_param();
    param->set_num_output(5);
    param->mutable_weight_filler()->set_type("gaussian");
  }
  virtual ~MarginSoftmaxLossLayerTest() {
    delete blob_bottom_data_;
    delete blob_bottom_label_;
    delete blob_top_loss_;
  }

  void SetMargins(double s, double m1, double m2, double m3) {
    MarginSoftmaxLossParameter* param =
        layer_param_.mutable_margin_softmax_loss_param();
    param->set_s(s);
    param->set_m1(m1);
    param->set_m2(m2);
    param->set_m3(m3);
  }

  // The loss from its definition, in double: cosines of the rows, psi with
  // SphereFace's continuation k = floor((m1 theta + m2) / pi), mean
  // cross-entropy.
  double ExpectedLoss(const Blob<Dtype>& weight, double s, double m1,
      double m2, double m3) {
    const int n = 6, d = 6, classes = 5;
    const Dtype* x = blob_bottom_data_->cpu_data();
    const Dtype* w = weight.cpu_data();
    double loss = 0;
    for (int i = 0; i < n; ++i) {
      const int label = static_cast<int>(blob_bottom_label_->cpu_data()[i]);
      vector<double> logits(classes);
      for (int j = 0; j < classes; ++j) {
        double dot = 0, xx = 0, ww = 0;
        for (int k = 0; k < d; ++k) {
          dot += x[i * d + k] * w[j * d + k];
          xx += x[i * d + k] * x[i * d + k];
          ww += w[j * d + k] * w[j * d + k];
        }
        double c = dot / std::sqrt(xx * ww);
        if (j == label) {
          const double angle = m1 * std::acos(c) + m2;
          const double k = std::floor(angle / M_PI);
          c = (static_cast<int>(k) % 2 == 0 ? 1 : -1) * std::cos(angle)
              - 2 * k - m3;
        }
        logits[j] = s * c;
      }
      double sum = 0;
      for (int j = 0; j < classes; ++j) sum += std::exp(logits[j]);
      loss += std::log(sum) - logits[label];
    }
    return loss / n;
  }

  void TestForward(double s, double m1, double m2, double m3) {
    SetMargins(s, m1, m2, m3);
    MarginSoftmaxLossLayer<Dtype> layer(layer_param_);
    layer.SetUp(blob_bottom_vec_, blob_top_vec_);
    layer.Forward(blob_bottom_vec_, blob_top_vec_);
    const double expected = ExpectedLoss(*layer.blobs()[0], s, m1, m2, m3);
    EXPECT_NEAR(blob_top_loss_->cpu_data()[0], expected,
        1e-4 * std::max(1.0, std::fabs(expected)));
  }

  // The features' and the weight's gradients by central differences.  A
  // small scale keeps the loss smooth enough at the checker's step.
  void TestGradient(double m1, double m2, double m3) {
    SetMargins(2, m1, m2, m3);
    MarginSoftmaxLossLayer<Dtype> layer(layer_param_);
    GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
    checker.CheckGradientExhaustive(&layer, blob_bottom_vec_, blob_top_vec_,
        0);
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_data_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(MarginSoftmaxLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(MarginSoftmaxLossLayerTest, TestSetUp) {
  typedef typename TypeParam::Dtype Dtype;
  MarginSoftmaxLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_loss_->num_axes(), 0);
  ASSERT_EQ(layer.blobs().size(), 1);
  EXPECT_EQ(layer.blobs()[0]->shape(0), 5);
  EXPECT_EQ(layer.blobs()[0]->shape(1), 6);
  const MarginSoftmaxLossParameter defaults;
  EXPECT_EQ(defaults.s(), 64);  // ArcFace
  EXPECT_EQ(defaults.m1(), 1);
  EXPECT_FLOAT_EQ(defaults.m2(), 0.5);
  EXPECT_EQ(defaults.m3(), 0);
}

TYPED_TEST(MarginSoftmaxLossLayerTest, TestForwardArcFace) {
  this->TestForward(64, 1, 0.5, 0);
}

TYPED_TEST(MarginSoftmaxLossLayerTest, TestForwardCosFace) {
  this->TestForward(30, 1, 0, 0.35);
}

TYPED_TEST(MarginSoftmaxLossLayerTest, TestForwardSphereFace) {
  this->TestForward(16, 4, 0, 0);
}

TYPED_TEST(MarginSoftmaxLossLayerTest, TestForwardCombined) {
  this->TestForward(8, 0.9, 0.4, 0.15);
}

TYPED_TEST(MarginSoftmaxLossLayerTest, TestGradientArcFace) {
  this->TestGradient(1, 0.5, 0);
}

TYPED_TEST(MarginSoftmaxLossLayerTest, TestGradientCosFace) {
  this->TestGradient(1, 0, 0.35);
}

TYPED_TEST(MarginSoftmaxLossLayerTest, TestGradientSphereFace) {
  this->TestGradient(4, 0, 0);
}

// The TEST phase computes the diffs in Backward instead of Forward: the same
// diffs, and the weight's diff accumulates.
TYPED_TEST(MarginSoftmaxLossLayerTest, TestBackwardInTestPhase) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetMargins(8, 1, 0.5, 0);
  MarginSoftmaxLossLayer<Dtype> train(this->layer_param_);
  train.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  train.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->blob_top_loss_->mutable_cpu_diff()[0] = 0.5;
  train.Backward(this->blob_top_vec_, vector<bool>(2, false),
      this->blob_bottom_vec_);
  vector<bool> propagate_down(2, false);
  propagate_down[0] = true;
  train.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  Blob<Dtype> feature_diff, weight_diff;
  feature_diff.CopyFrom(*this->blob_bottom_data_, true, true);
  weight_diff.CopyFrom(*train.blobs()[0], true, true);

  this->layer_param_.set_phase(TEST);
  MarginSoftmaxLossLayer<Dtype> test(this->layer_param_);
  test.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  test.blobs()[0]->CopyFrom(*train.blobs()[0]);
  caffe_set(test.blobs()[0]->count(), Dtype(0),
      test.blobs()[0]->mutable_cpu_diff());
  test.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->blob_top_loss_->mutable_cpu_diff()[0] = 0.5;
  test.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  test.Backward(this->blob_top_vec_, vector<bool>(2, false),
      this->blob_bottom_vec_);
  for (int i = 0; i < feature_diff.count(); ++i) {
    EXPECT_NEAR(this->blob_bottom_data_->cpu_diff()[i],
        feature_diff.cpu_diff()[i], 1e-5);
  }
  for (int i = 0; i < weight_diff.count(); ++i) {
    EXPECT_NEAR(test.blobs()[0]->cpu_diff()[i], weight_diff.cpu_diff()[i],
        1e-5);
  }
}

// axis: 2 flattens (6, 2, 3, 1) into 12 samples of 3 values.
TYPED_TEST(MarginSoftmaxLossLayerTest, TestAxis) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_margin_softmax_loss_param()->set_axis(2);
  this->blob_bottom_label_->Reshape(12, 1, 1, 1);
  for (int i = 0; i < 12; ++i) {
    this->blob_bottom_label_->mutable_cpu_data()[i] = i % 5;
  }
  this->SetMargins(2, 1, 0.5, 0);
  MarginSoftmaxLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(layer.blobs()[0]->shape(1), 3);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

}  // namespace caffe
