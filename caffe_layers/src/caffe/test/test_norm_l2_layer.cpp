#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/norm_l2_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// xialuxi/arcface-caffe's NormL2: x / sqrt(||x||^2 + 1e-7).
template <typename TypeParam>
class NormL2LayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 4 samples of 3 x 2 x 1 features (flattened to 6 per sample).
  NormL2LayerTest()
      : blob_bottom_(new Blob<Dtype>(4, 3, 2, 1)),
        blob_top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_);
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~NormL2LayerTest() {
    delete blob_bottom_;
    delete blob_top_;
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(NormL2LayerTest, TestDtypesAndDevices);

TYPED_TEST(NormL2LayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  NormL2Layer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_->shape(), this->blob_bottom_->shape());
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype* x = this->blob_bottom_->cpu_data();
  for (int i = 0; i < 4; ++i) {
    double squared = 0;
    for (int k = 0; k < 6; ++k) squared += double(x[i * 6 + k]) * x[i * 6 + k];
    const double scale = 1 / std::sqrt(squared + 1e-7);
    for (int k = 0; k < 6; ++k) {
      EXPECT_NEAR(this->blob_top_->cpu_data()[i * 6 + k], x[i * 6 + k] * scale,
          1e-6) << "sample " << i << ", feature " << k;
    }
  }
}

TYPED_TEST(NormL2LayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  NormL2Layer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

// A zero row: output 0, and the gradient the top diff / sqrt(1e-7) (finite),
// the epsilon of the fork.
TYPED_TEST(NormL2LayerTest, TestZeroRow) {
  typedef typename TypeParam::Dtype Dtype;
  Dtype* x = this->blob_bottom_->mutable_cpu_data();
  for (int k = 0; k < 6; ++k) x[6 + k] = 0;
  NormL2Layer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  Dtype* top_diff = this->blob_top_->mutable_cpu_diff();
  for (int k = 0; k < this->blob_top_->count(); ++k) top_diff[k] = Dtype(0.5);
  layer.Backward(this->blob_top_vec_, vector<bool>(1, true),
      this->blob_bottom_vec_);
  for (int k = 0; k < 6; ++k) {
    EXPECT_EQ(this->blob_top_->cpu_data()[6 + k], 0);
    EXPECT_NEAR(this->blob_bottom_->cpu_diff()[6 + k] / (0.5 / std::sqrt(1e-7)),
        1.0, 1e-5);
  }
}

// A row whose sum of squares overflows Dtype (entries near sqrt(max)): the
// output is still the unit row and the gradient (dy - (y . dy) y) / ||x||,
// where x / sqrt(inf) would have been a zero row.
TYPED_TEST(NormL2LayerTest, TestOverflowingNorm) {
  typedef typename TypeParam::Dtype Dtype;
  const int exponent = std::numeric_limits<Dtype>::max_exponent / 2 + 2;
  Dtype* x = this->blob_bottom_->mutable_cpu_data();
  double unscaled[6], squared = 0;
  for (int k = 0; k < 6; ++k) {
    unscaled[k] = x[6 + k];
    squared += unscaled[k] * unscaled[k];
    x[6 + k] = std::ldexp(x[6 + k], exponent);  // exact
  }
  const double norm = std::sqrt(squared);
  NormL2Layer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  Dtype* top_diff = this->blob_top_->mutable_cpu_diff();
  for (int k = 0; k < this->blob_top_->count(); ++k) top_diff[k] = Dtype(k % 3) - 1;
  layer.Backward(this->blob_top_vec_, vector<bool>(1, true),
      this->blob_bottom_vec_);
  double radial = 0;
  for (int k = 0; k < 6; ++k) radial += unscaled[k] / norm * top_diff[6 + k];
  for (int k = 0; k < 6; ++k) {
    const double y = unscaled[k] / norm;
    EXPECT_NEAR(this->blob_top_->cpu_data()[6 + k], y, 1e-6) << "feature " << k;
    const double dx = (top_diff[6 + k] - radial * y) / norm;  // times 2^-exponent
    EXPECT_NEAR(std::ldexp(double(this->blob_bottom_->cpu_diff()[6 + k]), exponent), dx, 1e-5)
        << "feature " << k;
  }
}

}  // namespace caffe
