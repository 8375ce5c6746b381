#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/inner_distance_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// happynear's InnerDistance: ||x_m - w_n||^2 (L2) or ||x_m - w_n||_1 (L1).
template <typename TypeParam>
class InnerDistanceLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 5 samples of 2 x 2 features, 3 class weights of 4.
  InnerDistanceLayerTest()
      : x_(new Blob<Dtype>(5, 2, 2, 1)), w_(new Blob<Dtype>(3, 4, 1, 1)),
        top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(x_);
    filler.Fill(w_);
    top_vec_.push_back(top_);
  }
  virtual ~InnerDistanceLayerTest() {
    delete x_;
    delete w_;
    delete top_;
  }
  double Reference(const Dtype* w, int m, int n, bool l1) {
    double sum = 0;
    for (int k = 0; k < 4; ++k) {
      const double d = double(x_->cpu_data()[m * 4 + k]) - w[n * 4 + k];
      sum += l1 ? std::fabs(d) : d * d;
    }
    return sum;
  }

  Blob<Dtype>* const x_;
  Blob<Dtype>* const w_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(InnerDistanceLayerTest, TestDtypesAndDevices);

TYPED_TEST(InnerDistanceLayerTest, TestForwardWeightBottom) {
  typedef typename TypeParam::Dtype Dtype;
  for (const char* type : {"L2", "L1"}) {
    LayerParameter param;
    param.mutable_inner_distance_param()->set_distance_type(type);
    vector<Blob<Dtype>*> bottom;
    bottom.push_back(this->x_);
    bottom.push_back(this->w_);
    InnerDistanceLayer<Dtype> layer(param);
    layer.SetUp(bottom, this->top_vec_);
    ASSERT_EQ(this->top_->shape(0), 5);
    ASSERT_EQ(this->top_->shape(1), 3);
    ASSERT_EQ(this->top_->num_axes(), 2);
    layer.Forward(bottom, this->top_vec_);
    for (int m = 0; m < 5; ++m) {
      for (int n = 0; n < 3; ++n) {
        EXPECT_NEAR(this->top_->cpu_data()[m * 3 + n],
            this->Reference(this->w_->cpu_data(), m, n, type[1] == '1'), 1e-5) << type;
      }
    }
  }
}

TYPED_TEST(InnerDistanceLayerTest, TestGradientWeightBottom) {
  typedef typename TypeParam::Dtype Dtype;
  for (const char* type : {"L2", "L1"}) {
    LayerParameter param;
    param.mutable_inner_distance_param()->set_distance_type(type);
    vector<Blob<Dtype>*> bottom;
    bottom.push_back(this->x_);
    bottom.push_back(this->w_);
    InnerDistanceLayer<Dtype> layer(param);
    GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
    checker.CheckGradientExhaustive(&layer, bottom, this->top_vec_);
  }
}

// With one bottom the layer owns num_output x K weights (weight_filler).
TYPED_TEST(InnerDistanceLayerTest, TestGradientOwnWeight) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.mutable_inner_distance_param()->set_num_output(3);
  param.mutable_inner_distance_param()->mutable_weight_filler()->set_type("gaussian");
  vector<Blob<Dtype>*> bottom(1, this->x_);
  InnerDistanceLayer<Dtype> layer(param);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, bottom, this->top_vec_);
  EXPECT_EQ(layer.blobs()[0]->shape(0), 3);
  EXPECT_EQ(layer.blobs()[0]->shape(1), 4);
}

// normalize: true rescales the own weight's rows to unit length in place.
TYPED_TEST(InnerDistanceLayerTest, TestNormalizeOwnWeight) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.mutable_inner_distance_param()->set_num_output(3);
  param.mutable_inner_distance_param()->set_normalize(true);
  param.mutable_inner_distance_param()->mutable_weight_filler()->set_type("gaussian");
  param.mutable_inner_distance_param()->mutable_weight_filler()->set_std(5);
  vector<Blob<Dtype>*> bottom(1, this->x_);
  InnerDistanceLayer<Dtype> layer(param);
  layer.SetUp(bottom, this->top_vec_);
  layer.Forward(bottom, this->top_vec_);
  const Dtype* w = layer.blobs()[0]->cpu_data();
  for (int n = 0; n < 3; ++n) {
    double squared = 0;
    for (int k = 0; k < 4; ++k) squared += double(w[n * 4 + k]) * w[n * 4 + k];
    EXPECT_NEAR(squared, 1.0, 1e-5);
    for (int m = 0; m < 5; ++m) {
      EXPECT_NEAR(this->top_->cpu_data()[m * 3 + n], this->Reference(w, m, n, false), 1e-5);
    }
  }
}

// A weight row whose sum of squares overflows Dtype is normalised too (the
// fork's x / sqrt(inf) would have zeroed it).
TYPED_TEST(InnerDistanceLayerTest, TestNormalizeOverflowingRow) {
  typedef typename TypeParam::Dtype Dtype;
  const int exponent = std::numeric_limits<Dtype>::max_exponent / 2 + 2;
  LayerParameter param;
  param.mutable_inner_distance_param()->set_num_output(3);
  param.mutable_inner_distance_param()->set_normalize(true);
  param.mutable_inner_distance_param()->mutable_weight_filler()->set_type("gaussian");
  vector<Blob<Dtype>*> bottom(1, this->x_);
  InnerDistanceLayer<Dtype> layer(param);
  layer.SetUp(bottom, this->top_vec_);
  Dtype* w = layer.blobs()[0]->mutable_cpu_data();
  double unscaled[4], norm = 0;
  for (int k = 0; k < 4; ++k) {
    unscaled[k] = w[4 + k];
    norm += unscaled[k] * unscaled[k];
    w[4 + k] = std::ldexp(w[4 + k], exponent);  // row 1
  }
  norm = std::sqrt(norm);
  layer.Forward(bottom, this->top_vec_);
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(layer.blobs()[0]->cpu_data()[4 + k], unscaled[k] / norm, 1e-6) << "column " << k;
  }
}

TYPED_TEST(InnerDistanceLayerTest, TestBadParametersAreErrors) {
  typedef typename TypeParam::Dtype Dtype;
  vector<Blob<Dtype>*> bottom;
  bottom.push_back(this->x_);
  bottom.push_back(this->w_);
  LayerParameter param;
  param.set_name("ip2");
  param.mutable_inner_distance_param()->set_distance_type("cosine");
  InnerDistanceLayer<Dtype> bad_type(param);
  EXPECT_DEATH(bad_type.SetUp(bottom, this->top_vec_), "'ip2'.*distance_type is 'cosine'");
  param.mutable_inner_distance_param()->set_distance_type("L2");
  param.mutable_inner_distance_param()->set_transpose(true);
  InnerDistanceLayer<Dtype> transposed(param);
  EXPECT_DEATH(transposed.SetUp(bottom, this->top_vec_), "transpose: true is not supported");
  param.mutable_inner_distance_param()->set_transpose(false);
  Blob<Dtype> narrow(3, 5, 1, 1);
  bottom[1] = &narrow;
  InnerDistanceLayer<Dtype> mismatch(param);
  EXPECT_DEATH(mismatch.SetUp(bottom, this->top_vec_), "the weight rows have 5 values; the features have 4");
}

}  // namespace caffe
