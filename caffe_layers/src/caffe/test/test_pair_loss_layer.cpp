#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/pair_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class PairLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 6 samples of 3 x 1 x 1 features, 3 classes of 2.
  PairLossLayerTest()
      : blob_bottom_data_(new Blob<Dtype>(6, 3, 1, 1)),
        blob_bottom_label_(new Blob<Dtype>(6, 1, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_data_);
    for (int i = 0; i < 6; ++i) {
      blob_bottom_label_->mutable_cpu_data()[i] = i / 2;
    }
    blob_bottom_vec_.push_back(blob_bottom_data_);
    blob_bottom_vec_.push_back(blob_bottom_label_);
    blob_top_vec_.push_back(blob_top_loss_);
    layer_param_.mutable_pair_loss_param()->set_theta(3.5);
  }
  virtual ~PairLossLayerTest() {
    delete blob_bottom_data_;
    delete blob_bottom_label_;
    delete blob_top_loss_;
  }

  // The hinge argument 1 - y_ij (theta - ||x_i - x_j||^2).
  Dtype Hinge(int i, int j, Dtype theta) {
    const Dtype* x = blob_bottom_data_->cpu_data();
    Dtype squared_distance = 0;
    for (int k = 0; k < 3; ++k) {
      squared_distance += (x[i * 3 + k] - x[j * 3 + k]) *
          (x[i * 3 + k] - x[j * 3 + k]);
    }
    const Dtype* label = blob_bottom_label_->cpu_data();
    const Dtype y = label[i] == label[j] ? 1 : -1;
    return 1 - y * (theta - squared_distance);
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_data_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(PairLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(PairLossLayerTest, TestSetUp) {
  typedef typename TypeParam::Dtype Dtype;
  PairLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  ASSERT_EQ(layer.blobs().size(), 1);
  EXPECT_EQ(layer.blobs()[0]->count(), 1);
  EXPECT_EQ(layer.blobs()[0]->cpu_data()[0], Dtype(3.5));
}

TYPED_TEST(PairLossLayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  PairLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  Dtype expected = 0;
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 6; ++j) {
      if (i != j) expected += std::max(this->Hinge(i, j, 3.5), Dtype(0));
    }
  }
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], expected / (6 * 5), 1e-5);
}

// Checks the features and theta (the layer's blob).
TYPED_TEST(PairLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  PairLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  // Kink-free: no hinge within reach of the checker's steps.
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 6; ++j) {
      if (i != j) {
        ASSERT_GT(std::fabs(this->Hinge(i, j, 3.5)), 0.1) << i << ", " << j;
      }
    }
  }
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

}  // namespace caffe
