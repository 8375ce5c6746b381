#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/inner_product_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// Caffe's own InnerProduct with the forks' inner_product_param.normalize,
// added by faceops' installer (caffe/util/faceops_inner_product.hpp).
template <typename TypeParam>
class InnerProductNormalizeTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  InnerProductNormalizeTest()
      : blob_bottom_(new Blob<Dtype>(4, 3, 2, 1)),
        blob_top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_);
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_top_vec_.push_back(blob_top_);
    InnerProductParameter* param =
        layer_param_.mutable_inner_product_param();
    param->set_num_output(5);
    param->set_normalize(true);
    param->mutable_weight_filler()->set_type("gaussian");
    param->mutable_weight_filler()->set_std(3);  // rows far from unit norm
    param->mutable_bias_filler()->set_type("gaussian");
  }
  virtual ~InnerProductNormalizeTest() {
    delete blob_bottom_;
    delete blob_top_;
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(InnerProductNormalizeTest, TestDtypesAndDevices);

// After a forward pass the stored rows are the filled rows over their norms
// and the top is x . w_j / ||w_j|| + b_j.
TYPED_TEST(InnerProductNormalizeTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  InnerProductLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  Blob<Dtype> filled;
  filled.CopyFrom(*layer.blobs()[0], false, true);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype* w = filled.cpu_data();
  const Dtype* stored = layer.blobs()[0]->cpu_data();
  const Dtype* bias = layer.blobs()[1]->cpu_data();
  const Dtype* x = this->blob_bottom_->cpu_data();
  for (int j = 0; j < 5; ++j) {
    double norm = 0;
    for (int k = 0; k < 6; ++k) norm += double(w[j * 6 + k]) * w[j * 6 + k];
    norm = std::sqrt(norm);
    EXPECT_GT(std::abs(norm - 1), 0.1);  // the filler's rows are not unit
    for (int k = 0; k < 6; ++k) {
      EXPECT_NEAR(stored[j * 6 + k], w[j * 6 + k] / norm, 1e-6);
    }
    for (int i = 0; i < 4; ++i) {
      double dot = 0;
      for (int k = 0; k < 6; ++k) dot += double(x[i * 6 + k]) * w[j * 6 + k];
      EXPECT_NEAR(this->blob_top_->cpu_data()[i * 5 + j],
          dot / norm + bias[j], 1e-5);
    }
  }
}

// The bottom's, the weight's and the bias's gradients by finite
// differences: the weight's diff is the gradient with respect to the stored
// row of a function of w / ||w|| (its radial part removed).
TYPED_TEST(InnerProductNormalizeTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  InnerProductLayer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

// The diff of each weight row is orthogonal to the (unit) row.
TYPED_TEST(InnerProductNormalizeTest, TestWeightDiffTangent) {
  typedef typename TypeParam::Dtype Dtype;
  InnerProductLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  caffe_set(this->blob_top_->count(), Dtype(1),
      this->blob_top_->mutable_cpu_diff());
  layer.Backward(this->blob_top_vec_, vector<bool>(1, true),
      this->blob_bottom_vec_);
  const Dtype* w = layer.blobs()[0]->cpu_data();
  const Dtype* diff = layer.blobs()[0]->cpu_diff();
  for (int j = 0; j < 5; ++j) {
    double radial = 0, length = 0;
    for (int k = 0; k < 6; ++k) {
      radial += double(w[j * 6 + k]) * diff[j * 6 + k];
      length += double(diff[j * 6 + k]) * diff[j * 6 + k];
    }
    EXPECT_GT(length, 1e-4);
    EXPECT_NEAR(radial, 0, 1e-5);
  }
}

// Weight rows whose sum of squares overflows Dtype are stored as unit rows
// too (x / sqrt(inf) would have zeroed them).
TYPED_TEST(InnerProductNormalizeTest, TestOverflowingRowNorm) {
  typedef typename TypeParam::Dtype Dtype;
  const int exponent = std::numeric_limits<Dtype>::max_exponent / 2 + 2;
  InnerProductLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  Blob<Dtype> filled;
  filled.CopyFrom(*layer.blobs()[0], false, true);
  Dtype* stored = layer.blobs()[0]->mutable_cpu_data();
  for (int k = 0; k < 12; ++k) stored[k] = std::ldexp(stored[k], exponent);  // rows 0, 1
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype* w = filled.cpu_data();
  for (int j = 0; j < 2; ++j) {
    double norm = 0;
    for (int k = 0; k < 6; ++k) norm += double(w[j * 6 + k]) * w[j * 6 + k];
    norm = std::sqrt(norm);
    for (int k = 0; k < 6; ++k) {
      EXPECT_NEAR(layer.blobs()[0]->cpu_data()[j * 6 + k], w[j * 6 + k] / norm, 1e-6)
          << "row " << j << ", column " << k;
    }
  }
}

}  // namespace caffe
