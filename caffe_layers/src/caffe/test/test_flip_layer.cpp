#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/flip_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// happynear's Flip: the mirror image along W (and/or H).
template <typename TypeParam>
class FlipLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  FlipLayerTest()
      : blob_bottom_(new Blob<Dtype>(2, 3, 4, 5)),
        blob_top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_);
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~FlipLayerTest() {
    delete blob_bottom_;
    delete blob_top_;
  }

  // top(n, c, h, w) == bottom(n, c, h', w') for every element.
  void CheckForward(bool flip_width, bool flip_height) {
    this->layer_param_.mutable_flip_param()->set_flip_width(flip_width);
    this->layer_param_.mutable_flip_param()->set_flip_height(flip_height);
    FlipLayer<Dtype> layer(this->layer_param_);
    layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
    EXPECT_EQ(this->blob_top_->shape(), this->blob_bottom_->shape());
    layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
    for (int n = 0; n < 2; ++n) {
      for (int c = 0; c < 3; ++c) {
        for (int h = 0; h < 4; ++h) {
          for (int w = 0; w < 5; ++w) {
            EXPECT_EQ(this->blob_top_->data_at(n, c, h, w),
                this->blob_bottom_->data_at(n, c, flip_height ? 3 - h : h,
                    flip_width ? 4 - w : w))
                << "at " << n << " " << c << " " << h << " " << w;
          }
        }
      }
    }
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(FlipLayerTest, TestDtypesAndDevices);

TYPED_TEST(FlipLayerTest, TestDefaultsFlipWidthOnly) {
  EXPECT_TRUE(this->layer_param_.flip_param().flip_width());
  EXPECT_FALSE(this->layer_param_.flip_param().flip_height());
  this->CheckForward(true, false);
}

TYPED_TEST(FlipLayerTest, TestForwardHeight) { this->CheckForward(false, true); }

TYPED_TEST(FlipLayerTest, TestForwardBoth) { this->CheckForward(true, true); }

TYPED_TEST(FlipLayerTest, TestForwardNeither) { this->CheckForward(false, false); }

TYPED_TEST(FlipLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_flip_param()->set_flip_height(true);
  FlipLayer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-2, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

}  // namespace caffe
