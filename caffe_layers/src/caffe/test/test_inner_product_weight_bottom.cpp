#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/inner_product_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// Caffe's own InnerProduct with caffe-windows' weight as bottom[1], added by
// faceops' installer (caffe/util/faceops_inner_product.hpp).
template <typename TypeParam>
class InnerProductWeightBottomTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 4 samples of 3 x 2 features (K = 6), 5 weight rows.
  InnerProductWeightBottomTest()
      : x_(new Blob<Dtype>(4, 3, 2, 1)), w_(new Blob<Dtype>(5, 6, 1, 1)),
        top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(x_);
    filler.Fill(w_);
    bottom_.push_back(x_);
    bottom_.push_back(w_);
    top_vec_.push_back(top_);
    layer_param_.set_name("cosine");
    layer_param_.mutable_inner_product_param()->set_bias_term(false);
  }
  virtual ~InnerProductWeightBottomTest() {
    delete x_;
    delete w_;
    delete top_;
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const x_;
  Blob<Dtype>* const w_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(InnerProductWeightBottomTest, TestDtypesAndDevices);

// top = x W^T, N = bottom[1]'s rows; the layer owns no blob.
TYPED_TEST(InnerProductWeightBottomTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  InnerProductLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->bottom_, this->top_vec_);
  EXPECT_EQ(layer.blobs().size(), 0);
  ASSERT_EQ(this->top_->shape(), (vector<int>{4, 5}));
  layer.Forward(this->bottom_, this->top_vec_);
  const Dtype* x = this->x_->cpu_data();
  const Dtype* w = this->w_->cpu_data();
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 5; ++j) {
      double dot = 0;
      for (int k = 0; k < 6; ++k) dot += double(x[i * 6 + k]) * w[j * 6 + k];
      EXPECT_NEAR(this->top_->cpu_data()[i * 5 + j], dot, 1e-5);
    }
  }
}

// Both bottoms get their gradients (the weight's flows to bottom[1]).
TYPED_TEST(InnerProductWeightBottomTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  InnerProductLayer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_vec_);
}

// The one-bottom layer is unchanged by the patch: its own weight and bias.
TYPED_TEST(InnerProductWeightBottomTest, TestOneBottomKeepsItsBlobs) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_inner_product_param()->set_num_output(3);
  this->layer_param_.mutable_inner_product_param()->set_bias_term(true);
  InnerProductLayer<Dtype> layer(this->layer_param_);
  vector<Blob<Dtype>*> one(1, this->x_);
  layer.SetUp(one, this->top_vec_);
  ASSERT_EQ(layer.blobs().size(), 2);
  EXPECT_EQ(layer.blobs()[0]->shape(), (vector<int>{3, 6}));
  EXPECT_EQ(this->top_->shape(), (vector<int>{4, 3}));
}

TYPED_TEST(InnerProductWeightBottomTest, TestUnsupportedFieldsAreErrors) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter with_bias(this->layer_param_);
  with_bias.mutable_inner_product_param()->set_bias_term(true);
  InnerProductLayer<Dtype> bias(with_bias);
  EXPECT_DEATH(bias.SetUp(this->bottom_, this->top_vec_),
      "'cosine'.*set inner_product_param.bias_term: false");
  LayerParameter transposed(this->layer_param_);
  transposed.mutable_inner_product_param()->set_transpose(true);
  InnerProductLayer<Dtype> transpose(transposed);
  EXPECT_DEATH(transpose.SetUp(this->bottom_, this->top_vec_),
      "transpose: true is not supported");
  LayerParameter normalized(this->layer_param_);
  normalized.mutable_inner_product_param()->set_normalize(true);
  InnerProductLayer<Dtype> normalize(normalized);
  EXPECT_DEATH(normalize.SetUp(this->bottom_, this->top_vec_),
      "with the weight as bottom\\[1\\], normalise that blob");
  Blob<Dtype> wrong(5, 4, 1, 1);
  vector<Blob<Dtype>*> mismatch(1, this->x_);
  mismatch.push_back(&wrong);
  InnerProductLayer<Dtype> layer(this->layer_param_);
  EXPECT_DEATH(layer.SetUp(mismatch, this->top_vec_),
      "bottom\\[1\\] \\(weight\\) has 20 values .* K = 6");
}

}  // namespace caffe
