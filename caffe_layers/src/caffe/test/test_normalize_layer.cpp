#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/normalize_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class NormalizeLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 4 samples of 5 x 1 x 1 features.
  NormalizeLayerTest()
      : blob_bottom_(new Blob<Dtype>(4, 5, 1, 1)),
        blob_top_(new Blob<Dtype>()),
        blob_top_norm_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_);
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~NormalizeLayerTest() {
    delete blob_bottom_;
    delete blob_top_;
    delete blob_top_norm_;
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_top_;
  Blob<Dtype>* const blob_top_norm_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(NormalizeLayerTest, TestDtypesAndDevices);

TYPED_TEST(NormalizeLayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_top_vec_.push_back(this->blob_top_norm_);
  NormalizeLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_->shape(), this->blob_bottom_->shape());
  EXPECT_EQ(this->blob_top_norm_->shape_string(), "4 1 1 1 (4)");
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype* x = this->blob_bottom_->cpu_data();
  for (int i = 0; i < 4; ++i) {
    double norm = 0;
    for (int k = 0; k < 5; ++k) norm += x[i * 5 + k] * x[i * 5 + k];
    norm = std::sqrt(norm);
    EXPECT_NEAR(this->blob_top_norm_->cpu_data()[i], norm, 1e-5);
    for (int k = 0; k < 5; ++k) {
      EXPECT_NEAR(this->blob_top_->cpu_data()[i * 5 + k], x[i * 5 + k] / norm,
          1e-6);
    }
  }
}

TYPED_TEST(NormalizeLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  NormalizeLayer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

// The checker differentiates each top value in turn, the norms included.
TYPED_TEST(NormalizeLayerTest, TestGradientBpNorm) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_top_vec_.push_back(this->blob_top_norm_);
  this->layer_param_.mutable_normalize_param()->set_bp_norm(true);
  NormalizeLayer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

// A two-axis (N x D) bottom, as InnerProduct gives.
TYPED_TEST(NormalizeLayerTest, TestGradient2D) {
  typedef typename TypeParam::Dtype Dtype;
  vector<int> shape(2);
  shape[0] = 4;
  shape[1] = 5;
  this->blob_bottom_->Reshape(shape);
  NormalizeLayer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

}  // namespace caffe
