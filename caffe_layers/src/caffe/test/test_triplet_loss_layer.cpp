#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/triplet_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class TripletLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 8 samples of 3 x 1 x 1 features, 4 classes of 2 (P x K batch); the
  // explicit form uses the first three blobs as anchor, positive, negative.
  TripletLossLayerTest()
      : blob_bottom_anchor_(new Blob<Dtype>(8, 3, 1, 1)),
        blob_bottom_positive_(new Blob<Dtype>(8, 3, 1, 1)),
        blob_bottom_negative_(new Blob<Dtype>(8, 3, 1, 1)),
        blob_bottom_label_(new Blob<Dtype>(8, 1, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_anchor_);
    filler.Fill(this->blob_bottom_positive_);
    filler.Fill(this->blob_bottom_negative_);
    for (int i = 0; i < 8; ++i) {
      blob_bottom_label_->mutable_cpu_data()[i] = i / 2;
    }
    blob_top_vec_.push_back(blob_top_loss_);
  }
  virtual ~TripletLossLayerTest() {
    delete blob_bottom_anchor_;
    delete blob_bottom_positive_;
    delete blob_bottom_negative_;
    delete blob_bottom_label_;
    delete blob_top_loss_;
  }

  vector<Blob<Dtype>*> MiningBottoms() {
    vector<Blob<Dtype>*> bottom;
    bottom.push_back(blob_bottom_anchor_);
    bottom.push_back(blob_bottom_label_);
    return bottom;
  }
  vector<Blob<Dtype>*> ExplicitBottoms() {
    vector<Blob<Dtype>*> bottom;
    bottom.push_back(blob_bottom_anchor_);
    bottom.push_back(blob_bottom_positive_);
    bottom.push_back(blob_bottom_negative_);
    return bottom;
  }
  // The hinge argument margin + ||a_i - p_i||^2 - ||a_i - n_i||^2.
  Dtype ExplicitHinge(int i, Dtype margin) {
    const Dtype* a = blob_bottom_anchor_->cpu_data() + i * 3;
    const Dtype* p = blob_bottom_positive_->cpu_data() + i * 3;
    const Dtype* n = blob_bottom_negative_->cpu_data() + i * 3;
    Dtype h = margin;
    for (int k = 0; k < 3; ++k) {
      h += (a[k] - p[k]) * (a[k] - p[k]) - (a[k] - n[k]) * (a[k] - n[k]);
    }
    return h;
  }
  void TestMiningGradient(TripletLossParameter_Mining mining, bool squared) {
    LayerParameter layer_param;
    layer_param.mutable_triplet_loss_param()->set_margin(0.2);
    layer_param.mutable_triplet_loss_param()->set_mining(mining);
    layer_param.mutable_triplet_loss_param()->set_squared(squared);
    TripletLossLayer<Dtype> layer(layer_param);
    vector<Blob<Dtype>*> bottom = MiningBottoms();
    layer.SetUp(bottom, blob_top_vec_);
    EXPECT_GT(layer.Forward(bottom, blob_top_vec_), 0);
    GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
    checker.CheckGradientExhaustive(&layer, bottom, blob_top_vec_, 0);
  }

  Blob<Dtype>* const blob_bottom_anchor_;
  Blob<Dtype>* const blob_bottom_positive_;
  Blob<Dtype>* const blob_bottom_negative_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(TripletLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(TripletLossLayerTest, TestForwardExplicit) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;  // margin: 1.0 by default
  TripletLossLayer<Dtype> layer(layer_param);
  vector<Blob<Dtype>*> bottom = this->ExplicitBottoms();
  layer.SetUp(bottom, this->blob_top_vec_);
  layer.Forward(bottom, this->blob_top_vec_);
  Dtype expected = 0;
  for (int i = 0; i < 8; ++i) {
    expected += std::max(this->ExplicitHinge(i, 1.0), Dtype(0));
  }
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], expected / (2 * 8), 1e-5);
}

TYPED_TEST(TripletLossLayerTest, TestGradientExplicit) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  TripletLossLayer<Dtype> layer(layer_param);
  vector<Blob<Dtype>*> bottom = this->ExplicitBottoms();
  layer.SetUp(bottom, this->blob_top_vec_);
  // Kink-free: no hinge within reach of the checker's steps.
  for (int i = 0; i < 8; ++i) {
    ASSERT_GT(std::fabs(this->ExplicitHinge(i, 1.0)), 0.1) << "triplet " << i;
  }
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, bottom, this->blob_top_vec_);
}

TYPED_TEST(TripletLossLayerTest, TestGradientSemihard) {
  this->TestMiningGradient(TripletLossParameter_Mining_SEMIHARD, true);
}

TYPED_TEST(TripletLossLayerTest, TestGradientHard) {
  this->TestMiningGradient(TripletLossParameter_Mining_HARD, false);
}

TYPED_TEST(TripletLossLayerTest, TestGradientAll) {
  this->TestMiningGradient(TripletLossParameter_Mining_ALL, true);
}

}  // namespace caffe
