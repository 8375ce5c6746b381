#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/channel_scale_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class ChannelScaleLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 3 samples, 4 channels, 2 positions; scales per sample and position.
  ChannelScaleLayerTest()
      : blob_bottom_(new Blob<Dtype>(3, 4, 2, 1)),
        blob_scale_(new Blob<Dtype>(3, 1, 2, 1)),
        blob_top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_);
    filler.Fill(blob_scale_);
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_bottom_vec_.push_back(blob_scale_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~ChannelScaleLayerTest() {
    delete blob_bottom_;
    delete blob_scale_;
    delete blob_top_;
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_scale_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(ChannelScaleLayerTest, TestDtypesAndDevices);

TYPED_TEST(ChannelScaleLayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  ChannelScaleLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  for (int n = 0; n < 3; ++n) {
    for (int c = 0; c < 4; ++c) {
      for (int s = 0; s < 2; ++s) {
        const int at = (n * 4 + c) * 2 + s;
        EXPECT_NEAR(this->blob_top_->cpu_data()[at],
            this->blob_scale_->cpu_data()[n * 2 + s] *
            this->blob_bottom_->cpu_data()[at], 1e-6);
      }
    }
  }
}

TYPED_TEST(ChannelScaleLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  ChannelScaleLayer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

// do_backward_feature / do_backward_scale false: the fork passes the top
// diff through unscaled and gives the scales a zero diff.
TYPED_TEST(ChannelScaleLayerTest, TestBackwardSwitches) {
  typedef typename TypeParam::Dtype Dtype;
  ChannelScaleParameter* param =
      this->layer_param_.mutable_channel_scale_param();
  param->set_do_backward_feature(false);
  param->set_do_backward_scale(false);
  ChannelScaleLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(this->blob_top_);
  caffe_copy(24, this->blob_top_->cpu_data(),
      this->blob_top_->mutable_cpu_diff());
  caffe_set(6, Dtype(7), this->blob_scale_->mutable_cpu_diff());
  layer.Backward(this->blob_top_vec_, vector<bool>(2, true),
      this->blob_bottom_vec_);
  for (int i = 0; i < 24; ++i) {
    EXPECT_EQ(this->blob_bottom_->cpu_diff()[i],
        this->blob_top_->cpu_diff()[i]);
  }
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(this->blob_scale_->cpu_diff()[i], Dtype(0));
  }
}

}  // namespace caffe
