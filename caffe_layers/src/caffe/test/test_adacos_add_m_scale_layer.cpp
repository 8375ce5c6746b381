#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/adacos_add_m_scale_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// xialuxi/arcface-caffe's AdaCosAddmScale: CosinAddm's margin at the targets,
// then everything times the adaptive scale, recomputed at each pass.
template <typename TypeParam>
class AdaCosAddmScaleLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 5 samples of 4 cosines in [-0.8, 0.9]: away from +-1 and from the
  // fallback's kink at cos(pi - m) = -0.878 (m = 0.5).
  AdaCosAddmScaleLayerTest()
      : blob_bottom_cosine_(new Blob<Dtype>(5, 4, 1, 1)),
        blob_bottom_label_(new Blob<Dtype>(5, 1, 1, 1)),
        blob_top_(new Blob<Dtype>()),
        blob_top_scale_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_min(-0.8);
    filler_param.set_max(0.9);
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_cosine_);
    const Dtype labels[] = {0, 3, 1, 1, 2};
    for (int i = 0; i < 5; ++i) blob_bottom_label_->mutable_cpu_data()[i] = labels[i];
    blob_bottom_vec_.push_back(blob_bottom_cosine_);
    blob_bottom_vec_.push_back(blob_bottom_label_);
    blob_top_vec_.push_back(blob_top_);
    param_ = layer_param_.mutable_adacos_add_m_scale_param();
    param_->set_num_classes(4);
  }
  virtual ~AdaCosAddmScaleLayerTest() {
    delete blob_bottom_cosine_;
    delete blob_bottom_label_;
    delete blob_top_;
    delete blob_top_scale_;
  }

  int Label(int i) const { return static_cast<int>(blob_bottom_label_->cpu_data()[i]); }

  // The fork's update, from its definition: log(mean_i (1 + sum_{j != y_i}
  // exp(s c_ij))) / cos(min(mean arccos c, pi / 4)).
  double NextScale(double s) const {
    const Dtype* c = blob_bottom_cosine_->cpu_data();
    double theta = 0, b = 0;
    for (int i = 0; i < 5; ++i) {
      b += 1;
      for (int j = 0; j < 4; ++j) {
        theta += std::acos(double(c[i * 4 + j]));
        if (j != Label(i)) b += std::exp(s * c[i * 4 + j]);
      }
    }
    return std::log(b / 5) / std::cos(std::min(theta / 20, M_PI / 4));
  }

  void CheckTop(double s, double m) const {
    const Dtype* c = blob_bottom_cosine_->cpu_data();
    for (int i = 0; i < 5; ++i) {
      for (int j = 0; j < 4; ++j) {
        const double cosine = c[i * 4 + j];
        const double expected = j == Label(i) ? s * std::cos(std::acos(cosine) + m)
                                              : s * cosine;
        EXPECT_NEAR(blob_top_->cpu_data()[i * 4 + j], expected, 2e-5 * s)
            << "sample " << i << ", class " << j;
      }
    }
  }

  LayerParameter layer_param_;
  AdaCosAddmScaleParameter* param_;
  Blob<Dtype>* const blob_bottom_cosine_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_;
  Blob<Dtype>* const blob_top_scale_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(AdaCosAddmScaleLayerTest, TestDtypesAndDevices);

// Two passes: the first from sqrt(2) log(C - 1), the second from the first.
TYPED_TEST(AdaCosAddmScaleLayerTest, TestForwardScaleSchedule) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_top_vec_.push_back(this->blob_top_scale_);
  AdaCosAddmScaleLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_scale_->count(), 1);
  const double s1 = this->NextScale(std::sqrt(2.0) * std::log(3.0));
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_NEAR(this->blob_top_scale_->cpu_data()[0] / s1, 1.0, 1e-5);
  this->CheckTop(s1, 0.5);
  const double s2 = this->NextScale(s1);
  EXPECT_GT(std::abs(s2 - s1), 1e-3);  // the schedule moves
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_NEAR(this->blob_top_scale_->cpu_data()[0] / s2, 1.0, 1e-5);
  this->CheckTop(s2, 0.5);
}

// As in the fork, the TEST phase applies the margin and updates the scale.
TYPED_TEST(AdaCosAddmScaleLayerTest, TestTestPhaseAsFork) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.set_phase(TEST);
  this->param_->set_m(0.3);
  AdaCosAddmScaleLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->CheckTop(this->NextScale(std::sqrt(2.0) * std::log(3.0)), 0.3);
}

TYPED_TEST(AdaCosAddmScaleLayerTest, TestFixedScale) {
  typedef typename TypeParam::Dtype Dtype;
  this->param_->set_update_scale(false);
  AdaCosAddmScaleLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  this->CheckTop(std::sqrt(2.0) * std::log(3.0), 0.5);
}

// With the scale fixed, Backward is the exact gradient of the forward pass.
TYPED_TEST(AdaCosAddmScaleLayerTest, TestGradientFixedScale) {
  typedef typename TypeParam::Dtype Dtype;
  this->param_->set_update_scale(false);
  AdaCosAddmScaleLayer<Dtype> layer(this->layer_param_);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

// With the update on, Backward takes this pass's s as a constant (the
// paper's and the fork's choice): s times the top diff, times
// cos m + sin m cos(theta) / sin(theta) at the targets.
TYPED_TEST(AdaCosAddmScaleLayerTest, TestBackwardScaleAsConstant) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_top_vec_.push_back(this->blob_top_scale_);
  AdaCosAddmScaleLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const double s = this->blob_top_scale_->cpu_data()[0];
  Dtype* top_diff = this->blob_top_->mutable_cpu_diff();
  for (int k = 0; k < 20; ++k) top_diff[k] = Dtype(0.1 * (k % 7) - 0.3);
  vector<bool> propagate(2, true);
  propagate[1] = false;
  layer.Backward(this->blob_top_vec_, propagate, this->blob_bottom_vec_);
  const Dtype* c = this->blob_bottom_cosine_->cpu_data();
  for (int i = 0; i < 5; ++i) {
    for (int j = 0; j < 4; ++j) {
      const double cosine = c[i * 4 + j];
      const double factor = j == this->Label(i)
          ? std::cos(0.5) + std::sin(0.5) * cosine / std::sqrt(1 - cosine * cosine)
          : 1.0;
      EXPECT_NEAR(this->blob_bottom_cosine_->cpu_diff()[i * 4 + j],
          s * (0.1 * ((i * 4 + j) % 7) - 0.3) * factor, 1e-4)
          << "sample " << i << ", class " << j;
    }
  }
}

// A target "cosine" above 1 (not a true cosine): taken as 1 (top s cos m,
// gradient factor 1, as CosinAddm), and the scale stays finite where the
// fork's arccos gives NaN.
TYPED_TEST(AdaCosAddmScaleLayerTest, TestCosineAboveOne) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_top_vec_.push_back(this->blob_top_scale_);
  this->blob_bottom_cosine_->mutable_cpu_data()[0] = Dtype(1.0001);  // sample 0's target
  AdaCosAddmScaleLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const double s = this->blob_top_scale_->cpu_data()[0];
  EXPECT_TRUE(std::isfinite(s));
  EXPECT_NEAR(this->blob_top_->cpu_data()[0], s * std::cos(0.5), 1e-4);
  Dtype* top_diff = this->blob_top_->mutable_cpu_diff();
  for (int k = 0; k < 20; ++k) top_diff[k] = 1;
  vector<bool> propagate(2, true);
  propagate[1] = false;
  layer.Backward(this->blob_top_vec_, propagate, this->blob_bottom_vec_);
  EXPECT_NEAR(this->blob_bottom_cosine_->cpu_diff()[0], s, 1e-4);
}

}  // namespace caffe
