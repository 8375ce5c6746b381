#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "faceops/fork_margins.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/global_lse_margin_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// happynear's GlobalLSEMargin (AM-Softmax's "auto" net).
template <typename TypeParam>
class GlobalLSEMarginLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 6 samples, 5 classes.  Cosines in [-0.2, 0.6], the targets `target`.
  GlobalLSEMarginLayerTest()
      : x_(new Blob<Dtype>(6, 5, 1, 1)), label_(new Blob<Dtype>(6, 1, 1, 1)),
        norm_(new Blob<Dtype>(6, 1, 1, 1)), top_(new Blob<Dtype>()),
        statistics_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_min(-0.2);
    filler_param.set_max(0.6);
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(x_);
    for (int i = 0; i < 6; ++i) label_->mutable_cpu_data()[i] = (i * 3) % 5;
    for (int i = 0; i < 6; ++i) norm_->mutable_cpu_data()[i] = 2 + 0.5 * i;
    bottom_.push_back(x_);
    bottom_.push_back(label_);
    top_vec_.push_back(top_);
    layer_param_.set_name("margin");
  }
  virtual ~GlobalLSEMarginLayerTest() {
    delete x_;
    delete label_;
    delete norm_;
    delete top_;
    delete statistics_;
  }
  void SetTargets(Dtype target) {
    for (int i = 0; i < 6; ++i) {
      x_->mutable_cpu_data()[i * 5 + static_cast<int>(label_->cpu_data()[i])] = target;
    }
  }
  // Row i: the non-targets all 0.2 + 0.01 i, so that with s = 30 the margins
  // target - 0.2 - 0.01 i - log(4) / 30 lie within 0.05 of each other.
  void SetRows(Dtype target) {
    for (int k = 0; k < 30; ++k) x_->mutable_cpu_data()[k] = Dtype(0.2 + 0.01 * (k / 5));
    SetTargets(target);
  }
  // The margins x_iy - (1/s_i) log sum_{j != y} exp(s_i x_ij), in double.
  vector<double> Margins(const vector<double>& scales) {
    vector<double> margins;
    for (int i = 0; i < 6; ++i) {
      const int y = static_cast<int>(label_->cpu_data()[i]);
      double sum = 0;
      for (int j = 0; j < 5; ++j) {
        if (j != y) sum += std::exp(scales[i] * x_->cpu_data()[i * 5 + j]);
      }
      margins.push_back(x_->cpu_data()[i * 5 + y] - std::log(sum) / scales[i]);
    }
    return margins;
  }

  LayerParameter layer_param_;
  Blob<Dtype>* const x_;
  Blob<Dtype>* const label_;
  Blob<Dtype>* const norm_;
  Blob<Dtype>* const top_;
  Blob<Dtype>* const statistics_;
  vector<Blob<Dtype>*> bottom_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(GlobalLSEMarginLayerTest, TestDtypesAndDevices);

// The first pass sets m to the batch's mean-shift mode; the targets get
// s (x - m), the rest s x; the statistics are the fork's five.
TYPED_TEST(GlobalLSEMarginLayerTest, TestForwardFirstPass) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetRows(Dtype(0.9));  // margins ~0.6 > 0, within 0.1 of each other
  this->top_vec_.push_back(this->statistics_);
  GlobalLSEMarginLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->bottom_, this->top_vec_);
  ASSERT_EQ(layer.blobs().size(), 2);
  EXPECT_EQ(layer.blobs()[0]->cpu_data()[0], Dtype(30));  // no filler
  EXPECT_EQ(layer.blobs()[1]->cpu_data()[0], Dtype(0));
  EXPECT_EQ(layer.layer_param().param(0).lr_mult(), 1);
  EXPECT_EQ(layer.layer_param().param(1).lr_mult(), 0);
  EXPECT_EQ(this->statistics_->count(), 5);
  layer.Forward(this->bottom_, this->top_vec_);
  const vector<double> margins = this->Margins(vector<double>(6, 30));
  double low = margins[0], high = margins[0], mean = 0;
  for (double v : margins) {
    low = std::min(low, v);
    high = std::max(high, v);
    mean += v / 6;
  }
  ASSERT_LT(high - low, 0.1);  // one window: the mode is the mean
  ASSERT_GT(low, 0);
  const Dtype m = layer.blobs()[1]->cpu_data()[0];
  EXPECT_NEAR(m, mean, 1e-5);
  for (int i = 0; i < 6; ++i) {
    const int y = static_cast<int>(this->label_->cpu_data()[i]);
    for (int j = 0; j < 5; ++j) {
      const Dtype x = this->x_->cpu_data()[i * 5 + j];
      EXPECT_NEAR(this->top_->cpu_data()[i * 5 + j], 30 * (j == y ? x - m : x), 1e-4);
    }
  }
  const Dtype* stats = this->statistics_->cpu_data();
  EXPECT_EQ(stats[0], Dtype(30));
  EXPECT_NEAR(stats[1], 0.9, 1e-6);
  EXPECT_NEAR(stats[2], 0.9 - mean, 1e-5);
  EXPECT_NEAR(stats[3], 0.225, 1e-6);  // the mean of 0.2 + 0.01 i
  EXPECT_EQ(stats[4], m);
}

// Later passes: m <- 0.9 m + 0.1 mode, the mode found from m; an m <= 0
// leaves the logits s x.
TYPED_TEST(GlobalLSEMarginLayerTest, TestNegativeMarginMovesAndIsNotApplied) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetRows(Dtype(-0.1));  // margins in [-0.4, -0.34]
  GlobalLSEMarginLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->bottom_, this->top_vec_);
  layer.blobs()[1]->mutable_cpu_data()[0] = Dtype(-0.45);
  layer.Forward(this->bottom_, this->top_vec_);
  const vector<double> margins = this->Margins(vector<double>(6, 30));
  double sum = 0;
  int count = 0;
  for (double v : margins) {
    if (std::fabs(v + 0.45) < 0.1) {
      sum += v;
      ++count;
    }
  }
  ASSERT_GT(count, 0);
  EXPECT_NEAR(layer.blobs()[1]->cpu_data()[0], 0.9 * -0.45 + 0.1 * sum / count, 1e-5);
  for (int k = 0; k < 30; ++k) {
    EXPECT_NEAR(this->top_->cpu_data()[k], 30 * this->x_->cpu_data()[k], 1e-4);
  }
}

// scale_param: the filler gives s, min_value / max_value clamp it in place.
TYPED_TEST(GlobalLSEMarginLayerTest, TestScaleFillerAndClamp) {
  typedef typename TypeParam::Dtype Dtype;
  this->layer_param_.mutable_scale_param()->mutable_filler()->set_value(50);
  this->layer_param_.mutable_scale_param()->set_max_value(40);
  GlobalLSEMarginLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->bottom_, this->top_vec_);
  EXPECT_EQ(layer.blobs()[0]->cpu_data()[0], Dtype(50));
  layer.Forward(this->bottom_, this->top_vec_);
  EXPECT_EQ(layer.blobs()[0]->cpu_data()[0], Dtype(40));
}

// With m <= 0 the top is s x (or r_i x), whatever m becomes, so the
// GradientChecker sees the exact gradients: x's, s's and the norms'.
TYPED_TEST(GlobalLSEMarginLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetTargets(Dtype(-0.1));
  this->layer_param_.mutable_scale_param()->mutable_filler()->set_value(4);
  GlobalLSEMarginLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->bottom_, this->top_vec_);
  layer.blobs()[1]->mutable_cpu_data()[0] = Dtype(-0.5);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_vec_, 0);
  EXPECT_LT(layer.blobs()[1]->cpu_data()[0], 0);
}

TYPED_TEST(GlobalLSEMarginLayerTest, TestGradientFeatureNorms) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetTargets(Dtype(-0.1));
  this->bottom_.push_back(this->norm_);
  GlobalLSEMarginLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->bottom_, this->top_vec_);
  EXPECT_EQ(layer.layer_param().param(0).lr_mult(), 0);
  layer.blobs()[1]->mutable_cpu_data()[0] = Dtype(-0.5);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_vec_, 0);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_vec_, 2);
}

// With m > 0, Backward takes m as a constant (the fork's): x's diff is
// s top_diff, s's is sum top_diff (x - m at the targets).
TYPED_TEST(GlobalLSEMarginLayerTest, TestBackwardWithMargin) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetRows(Dtype(0.9));
  GlobalLSEMarginLayer<Dtype> layer(this->layer_param_);
  layer.SetUp(this->bottom_, this->top_vec_);
  layer.Forward(this->bottom_, this->top_vec_);
  const Dtype m = layer.blobs()[1]->cpu_data()[0];
  ASSERT_GT(m, 0.1);
  for (int k = 0; k < 30; ++k) this->top_->mutable_cpu_diff()[k] = Dtype(0.01 * (k % 7) - 0.03);
  layer.blobs()[0]->mutable_cpu_diff()[0] = Dtype(0);
  vector<bool> propagate(2, false);
  propagate[0] = true;
  layer.Backward(this->top_vec_, propagate, this->bottom_);
  double s_diff = 0;
  for (int i = 0; i < 6; ++i) {
    const int y = static_cast<int>(this->label_->cpu_data()[i]);
    for (int j = 0; j < 5; ++j) {
      const int k = i * 5 + j;
      const double dy = this->top_->cpu_diff()[k];
      EXPECT_NEAR(this->x_->cpu_diff()[k], 30 * dy, 1e-6);
      s_diff += dy * (this->x_->cpu_data()[k] - (j == y ? m : 0));
    }
  }
  EXPECT_NEAR(layer.blobs()[0]->cpu_diff()[0], s_diff, 1e-5);
}

// Where the fork's mean shift restarts forever (no margin within 0.1 of the
// batch mean; a NaN margin), the mean is taken, and a NaN mode keeps m.
TYPED_TEST(GlobalLSEMarginLayerTest, TestMeanShiftAlwaysEnds) {
  const double split[4] = {-1, -1, 1, 1.1};
  EXPECT_NEAR(faceops::fork::global_lse_mean_shift(split, 4, 0.025, 20), 0.025, 1e-12);
  EXPECT_NEAR(faceops::fork::global_lse_margin_update(split, 4, 0.0), 0.025, 1e-12);
  // From m = 1.02 one step: the window holds 1 and 1.1 (mode 1.05).
  EXPECT_NEAR(faceops::fork::global_lse_margin_update(split, 4, 1.02), 0.9 * 1.02 + 0.1 * 1.05, 1e-12);
  const double with_nan[3] = {0.3, NAN, 0.32};
  EXPECT_EQ(faceops::fork::global_lse_margin_update(with_nan, 3, 0.0), 0.0);
  EXPECT_NEAR(faceops::fork::global_lse_margin_update(with_nan, 3, 0.31), 0.9 * 0.31 + 0.1 * 0.31, 1e-12);
}

TYPED_TEST(GlobalLSEMarginLayerTest, TestBadInputIsAnError) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter bad(this->layer_param_);
  bad.mutable_scale_param()->set_min_value(5);
  bad.mutable_scale_param()->set_max_value(1);
  GlobalLSEMarginLayer<Dtype> clamp(bad);
  EXPECT_DEATH(clamp.SetUp(this->bottom_, this->top_vec_),
      "'margin'.*scale_param.min_value \\(5\\) is above max_value \\(1\\)");
  Blob<Dtype> one_class(6, 1, 1, 1);
  vector<Blob<Dtype>*> bottom(1, &one_class);
  bottom.push_back(this->label_);
  GlobalLSEMarginLayer<Dtype> layer(this->layer_param_);
  EXPECT_DEATH(layer.SetUp(bottom, this->top_vec_), "expected at least 2");
}

}  // namespace caffe
