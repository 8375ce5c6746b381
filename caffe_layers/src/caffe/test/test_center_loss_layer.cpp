#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/center_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

template <typename TypeParam>
class CenterLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 6 samples of 2 x 2 features, 4 classes; class 3 is not in the batch.
  CenterLossLayerTest()
      : blob_bottom_data_(new Blob<Dtype>(6, 2, 2, 1)),
        blob_bottom_label_(new Blob<Dtype>(6, 1, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_data_);
    const Dtype labels[] = {0, 1, 2, 0, 1, 0};
    for (int i = 0; i < 6; ++i) {
      blob_bottom_label_->mutable_cpu_data()[i] = labels[i];
    }
    blob_bottom_vec_.push_back(blob_bottom_data_);
    blob_bottom_vec_.push_back(blob_bottom_label_);
    blob_top_vec_.push_back(blob_top_loss_);
    layer_param_.mutable_center_loss_param()->set_num_output(4);
    layer_param_.mutable_center_loss_param()->mutable_center_filler()
        ->set_type("gaussian");
  }
  virtual ~CenterLossLayerTest() {
    delete blob_bottom_data_;
    delete blob_bottom_label_;
    delete blob_top_loss_;
  }

  Dtype Residual(const Blob<Dtype>& centers, int i, int k) {
    const int label = static_cast<int>(blob_bottom_label_->cpu_data()[i]);
    return blob_bottom_data_->cpu_data()[i * 4 + k] -
        centers.cpu_data()[label * 4 + k];
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const blob_bottom_data_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(CenterLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(CenterLossLayerTest, TestSetUp) {
  typedef typename TypeParam::Dtype Dtype;
  CenterLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_loss_->num_axes(), 0);
  ASSERT_EQ(layer.blobs().size(), 1);
  EXPECT_EQ(layer.blobs()[0]->shape(0), 4);
  EXPECT_EQ(layer.blobs()[0]->shape(1), 4);
}

TYPED_TEST(CenterLossLayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  CenterLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  Dtype expected = 0;
  for (int i = 0; i < 6; ++i) {
    for (int k = 0; k < 4; ++k) {
      const Dtype r = this->Residual(*layer.blobs()[0], i, k);
      expected += r * r;
    }
  }
  expected /= 2 * 6;
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], expected, 1e-5);
}

// Caffe's GradientChecker checks every parameter blob of a layer, and the
// centers' diff is an update direction, not a gradient; so the features'
// gradient is checked here with the same central differences.
TYPED_TEST(CenterLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype top_diff = 0.7, step = 1e-2;
  CenterLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->blob_top_loss_->mutable_cpu_diff()[0] = top_diff;
  vector<bool> propagate_down(2, false);
  propagate_down[0] = true;
  layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  Blob<Dtype> computed;
  computed.CopyFrom(*this->blob_bottom_data_, true, true);
  // The loss from the top's data: Forward() returns it times the top diff.
  for (int j = 0; j < this->blob_bottom_data_->count(); ++j) {
    Dtype* x = this->blob_bottom_data_->mutable_cpu_data();
    const Dtype original = x[j];
    x[j] = original + step;
    layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
    const Dtype plus = this->blob_top_loss_->cpu_data()[0];
    this->blob_bottom_data_->mutable_cpu_data()[j] = original - step;
    layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
    const Dtype minus = this->blob_top_loss_->cpu_data()[0];
    this->blob_bottom_data_->mutable_cpu_data()[j] = original;
    EXPECT_NEAR(computed.cpu_diff()[j], top_diff * (plus - minus) / (2 * step),
        1e-3) << "feature " << j;
  }
}

// The centers' diff accumulates (Wen et al., eq. 4)
// delta_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), whatever the top diff.
TYPED_TEST(CenterLossLayerTest, TestCentersDiff) {
  typedef typename TypeParam::Dtype Dtype;
  CenterLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  Blob<Dtype>& centers = *layer.blobs()[0];
  caffe_set(centers.count(), Dtype(0.25), centers.mutable_cpu_diff());
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->blob_top_loss_->mutable_cpu_diff()[0] = 3;
  layer.Backward(this->blob_top_vec_, vector<bool>(2, false),
      this->blob_bottom_vec_);
  const int count[] = {3, 2, 1, 0};
  for (int j = 0; j < 4; ++j) {
    for (int k = 0; k < 4; ++k) {
      Dtype sum = 0;
      for (int i = 0; i < 6; ++i) {
        if (this->blob_bottom_label_->cpu_data()[i] == j) {
          sum -= this->Residual(centers, i, k);
        }
      }
      EXPECT_NEAR(centers.cpu_diff()[j * 4 + k],
          0.25 + sum / (1 + count[j]), 1e-5) << "center " << j;
    }
  }
}

// axis: 2 flattens (6, 2, 2, 1) into 12 samples of 2 values.
TYPED_TEST(CenterLossLayerTest, TestAxis) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_center_loss_param()->set_axis(2);
  this->blob_bottom_label_->Reshape(12, 1, 1, 1);
  for (int i = 0; i < 12; ++i) {
    this->blob_bottom_label_->mutable_cpu_data()[i] = i % 4;
  }
  CenterLossLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(layer.blobs()[0]->shape(1), 2);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype* x = this->blob_bottom_data_->cpu_data();
  const Dtype* c = layer.blobs()[0]->cpu_data();
  Dtype expected = 0;
  for (int i = 0; i < 12; ++i) {
    for (int k = 0; k < 2; ++k) {
      const Dtype r = x[i * 2 + k] - c[(i % 4) * 2 + k];
      expected += r * r;
    }
  }
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], expected / (2 * 12), 1e-5);
}

}  // namespace caffe
