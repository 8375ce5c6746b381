#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/margin_inner_product_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// sphereface's psi from the angle itself (not the Chebyshev form the layer
// uses): (-1)^k cos(m theta) - 2k, k = floor(m theta / pi).
static double ReferencePsi(double c, int m) {
  const double theta = std::acos(std::max(-1.0, std::min(1.0, c)));
  const int k = std::min(m - 1, static_cast<int>(std::floor(m * theta / M_PI)));
  return (k % 2 ? -1 : 1) * std::cos(m * theta) - 2 * k;
}

template <typename TypeParam>
class MarginInnerProductLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 6 samples of 5 features, 4 classes.
  MarginInnerProductLayerTest()
      : blob_bottom_(new Blob<Dtype>(6, 5, 1, 1)),
        blob_label_(new Blob<Dtype>(6, 1, 1, 1)),
        blob_top_(new Blob<Dtype>()),
        blob_lambda_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_);
    const Dtype labels[] = {0, 3, 1, 1, 2, 0};
    for (int i = 0; i < 6; ++i) blob_label_->mutable_cpu_data()[i] = labels[i];
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_bottom_vec_.push_back(blob_label_);
    blob_top_vec_.push_back(blob_top_);
    blob_top_vec_.push_back(blob_lambda_);
    MarginInnerProductParameter* param =
        layer_param_.mutable_margin_inner_product_param();
    param->set_num_output(4);
    param->mutable_weight_filler()->set_type("gaussian");
    param->mutable_weight_filler()->set_std(2);
  }
  virtual ~MarginInnerProductLayerTest() {
    delete blob_bottom_;
    delete blob_label_;
    delete blob_top_;
    delete blob_lambda_;
  }

  void SetType(int m) {
    layer_param_.mutable_margin_inner_product_param()->set_type(
        static_cast<MarginInnerProductParameter_MarginType>(m - 1));
  }

  // The top against the definition, with the unit weight rows the layer
  // stored and the lambda it reported.
  void CheckForward(Layer<Dtype>* layer, int m) {
    const Dtype* x = blob_bottom_->cpu_data();
    const Dtype* w = layer->blobs()[0]->cpu_data();
    const double lambda = blob_lambda_->cpu_data()[0];
    for (int i = 0; i < 6; ++i) {
      double norm = 0;
      for (int k = 0; k < 5; ++k) norm += double(x[i * 5 + k]) * x[i * 5 + k];
      norm = std::sqrt(norm);
      const int label = static_cast<int>(blob_label_->cpu_data()[i]);
      for (int j = 0; j < 4; ++j) {
        double dot = 0, w_norm = 0;
        for (int k = 0; k < 5; ++k) {
          dot += double(x[i * 5 + k]) * w[j * 5 + k];
          w_norm += double(w[j * 5 + k]) * w[j * 5 + k];
        }
        EXPECT_NEAR(w_norm, 1, 1e-5);
        const double expected = j != label ? dot :
            (norm * ReferencePsi(dot / norm, m) + lambda * dot) / (1 + lambda);
        EXPECT_NEAR(blob_top_->cpu_data()[i * 4 + j], expected, 1e-4)
            << "m " << m << ", sample " << i << ", class " << j;
      }
    }
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_label_;
  Blob<Dtype>* const blob_top_;
  Blob<Dtype>* const blob_lambda_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(MarginInnerProductLayerTest, TestDtypesAndDevices);

// lambda = max(base (1 + gamma t)^-power, lambda_min) at the t-th pass
// (t counted from `iteration`), and the logits for every margin type.
TYPED_TEST(MarginInnerProductLayerTest, TestForwardAndSchedule) {
  typedef typename TypeParam::Dtype Dtype;
  MarginInnerProductParameter* param =
      this->layer_param_.mutable_margin_inner_product_param();
  param->set_base(10);
  param->set_gamma(0.5);
  param->set_power(1);
  param->set_lambda_min(2);
  param->set_iteration(3);
  for (int m = 1; m <= 4; ++m) {
    this->SetType(m);
    MarginInnerProductLayer<Dtype> layer(this->layer_param_);
    layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
    for (int t = 4; t < 12; ++t) {
      layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
      EXPECT_NEAR(this->blob_lambda_->cpu_data()[0],
          std::max(2.0, 10 / (1 + 0.5 * t)), 1e-5) << "t = " << t;
      this->CheckForward(&layer, m);
    }
  }
}

// exact_gradient: the features' and weight's gradients by finite
// differences, for m = 2, 3, 4.
TYPED_TEST(MarginInnerProductLayerTest, TestExactGradient) {
  typedef typename TypeParam::Dtype Dtype;
  MarginInnerProductParameter* param =
      this->layer_param_.mutable_margin_inner_product_param();
  param->set_exact_gradient(true);
  param->set_base(0.5);
  this->blob_top_vec_.resize(1);
  for (int m = 2; m <= 4; ++m) {
    this->SetType(m);
    MarginInnerProductLayer<Dtype> layer(this->layer_param_);
    GradientChecker<Dtype> checker(1e-3, 2e-2, 1701);
    checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
        this->blob_top_vec_, 0);
  }
}

// The fork's backward: the weight diff is g^T x; the target's feature
// gradient has (coeff_w, coeff_x) rescaled to unit length.
TYPED_TEST(MarginInnerProductLayerTest, TestForkBackward) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_margin_inner_product_param()->set_base(0.5);
  this->SetType(4);
  MarginInnerProductLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  Blob<Dtype> g(6, 4, 1, 1);
  filler.Fill(&g);
  caffe_copy(24, g.cpu_data(), this->blob_top_->mutable_cpu_diff());
  caffe_set(20, Dtype(0), layer.blobs()[0]->mutable_cpu_diff());
  vector<bool> propagate_down(2, false);
  propagate_down[0] = true;
  layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  const Dtype* x = this->blob_bottom_->cpu_data();
  const Dtype* w = layer.blobs()[0]->cpu_data();
  const double lambda = 0.5;
  for (int j = 0; j < 4; ++j) {
    for (int k = 0; k < 5; ++k) {
      double expected = 0;
      for (int i = 0; i < 6; ++i) expected += g.cpu_data()[i * 4 + j] * x[i * 5 + k];
      EXPECT_NEAR(layer.blobs()[0]->cpu_diff()[j * 5 + k], expected, 1e-4);
    }
  }
  for (int i = 0; i < 6; ++i) {
    const int label = static_cast<int>(this->blob_label_->cpu_data()[i]);
    double norm = 0, dot = 0;
    for (int k = 0; k < 5; ++k) {
      norm += double(x[i * 5 + k]) * x[i * 5 + k];
      dot += double(x[i * 5 + k]) * w[label * 5 + k];
    }
    norm = std::sqrt(norm);
    const double c = dot / norm, h = 1e-6;
    const double dpsi = (ReferencePsi(c + h, 4) - ReferencePsi(c - h, 4)) / (2 * h);
    double coeff_w = dpsi, coeff_x = (ReferencePsi(c, 4) - c * dpsi) / norm;
    const double length = std::sqrt(coeff_w * coeff_w + coeff_x * coeff_x);
    coeff_w /= length;
    coeff_x /= length;
    for (int k = 0; k < 5; ++k) {
      double expected = 0;
      for (int j = 0; j < 4; ++j) {
        const double gij = g.cpu_data()[i * 4 + j];
        expected += j != label ? gij * w[j * 5 + k] :
            gij / (1 + lambda) * (coeff_w * w[j * 5 + k] + coeff_x * x[i * 5 + k])
            + lambda / (1 + lambda) * gij * w[j * 5 + k];
      }
      EXPECT_NEAR(this->blob_bottom_->cpu_diff()[i * 5 + k], expected, 1e-3)
          << "sample " << i << ", feature " << k;
    }
  }
}

// A feature row whose sum of squares overflows Dtype (entries near
// sqrt(max)): the layer is homogeneous in x, so its logits are those of the
// unscaled row times the scale and its feature gradient is the unscaled
// row's, where sqrt(inf) would have given c = 0.
TYPED_TEST(MarginInnerProductLayerTest, TestOverflowingFeatureNorm) {
  typedef typename TypeParam::Dtype Dtype;
  MarginInnerProductParameter* param =
      this->layer_param_.mutable_margin_inner_product_param();
  param->set_base(0.5);
  param->set_gamma(0);  // lambda = 0.5 at every pass
  param->set_exact_gradient(true);
  this->blob_top_vec_.resize(1);
  this->SetType(4);
  MarginInnerProductLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  Blob<Dtype> g(6, 4, 1, 1);
  filler.Fill(&g);
  vector<bool> propagate_down(2, false);
  propagate_down[0] = true;
  vector<double> logits, diffs;
  const int exponent = std::numeric_limits<Dtype>::max_exponent / 2 + 2;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      Dtype* x = this->blob_bottom_->mutable_cpu_data();
      for (int k = 0; k < 5; ++k) x[5 + k] = std::ldexp(x[5 + k], exponent);  // exact
    }
    layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
    caffe_copy(24, g.cpu_data(), this->blob_top_->mutable_cpu_diff());
    layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
    const int scale = pass == 1 ? -exponent : 0;
    for (int j = 0; j < 4; ++j) {
      logits.push_back(std::ldexp(double(this->blob_top_->cpu_data()[4 + j]), scale));
    }
    for (int k = 0; k < 5; ++k) diffs.push_back(this->blob_bottom_->cpu_diff()[5 + k]);
  }
  for (int j = 0; j < 4; ++j) {
    EXPECT_NEAR(logits[4 + j], logits[j], 1e-5 * (1 + std::fabs(logits[j]))) << "class " << j;
  }
  for (int k = 0; k < 5; ++k) {
    EXPECT_NEAR(diffs[5 + k], diffs[k], 1e-5 * (1 + std::fabs(diffs[k]))) << "feature " << k;
  }
}

// A feature row with an Inf entry has no norm in Dtype: a CHECK names it,
// where the fork's sqrt(inf) passed a "norm > 0" test.
TYPED_TEST(MarginInnerProductLayerTest, TestInfiniteFeatureIsAnError) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_top_vec_.resize(1);
  MarginInnerProductLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  this->blob_bottom_->mutable_cpu_data()[7] = std::numeric_limits<Dtype>::infinity();
  EXPECT_DEATH(layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_),
      "row 1 has norm inf; expected nonzero, finite features");
}

}  // namespace caffe
