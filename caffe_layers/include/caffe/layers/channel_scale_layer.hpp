#ifndef CAFFE_CHANNEL_SCALE_LAYER_HPP_
#define CAFFE_CHANNEL_SCALE_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief happynear's ChannelScale (caffe-windows, AM-Softmax's
 *        face_train_test_wo_fn): scales each sample's channels by a per-sample
 *        (per-position) factor, typically the feature norms from Normalize's
 *        second top, so that the logits are @f$ \|x_i\| (\cos\theta_{ij} + b) @f$.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times C \times \ldots) @f$ the values @f$ x_{ncs} @f$, the
 *      axes after 1 being S positions
 *   -# @f$ N S @f$ values in total: the scales @f$ a_{ns} @f$
 * @param top output Blob vector (length 1)
 *   -# the shape of bottom[0]: @f$ y_{ncs} = a_{ns} x_{ncs} @f$
 *
 * Backward: @f$ \partial/\partial x_{ncs} = a_{ns} g_{ncs} @f$ and
 * @f$ \partial/\partial a_{ns} = \sum_c x_{ncs} g_{ncs} @f$ for the top diff g.
 * channel_scale_param: do_forward false copies bottom[0] to the top;
 * do_backward_feature false passes g through to bottom[0] unscaled;
 * do_backward_scale false gives the scales a zero diff (as in the fork).
 * global_scale (the fork's single clamped scale blob) is not supported: it
 * stops Caffe with an error, and init_global_scale is then unused.
 */
template <typename Dtype>
class ChannelScaleLayer : public Layer<Dtype> {
 public:
  explicit ChannelScaleLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual inline const char* type() const { return "ChannelScale"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  int num_, channels_, positions_;  // N, C, S
};

}  // namespace caffe

#endif  // CAFFE_CHANNEL_SCALE_LAYER_HPP_
