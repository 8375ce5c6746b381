#include <vector>

#include "faceops/margin_softmax.h"

#include "caffe/layers/normalize_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// The faceops kernels run on Caffe's stream, the default one (NULL).
template <typename Dtype>
void NormalizeLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::normalize_rows<Dtype>(bottom[0]->gpu_data(), num_, dim_,
        top[0]->mutable_gpu_data(), Norms(top)->mutable_gpu_data(), NULL);
  });
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::normalize_rows_backward<Dtype>(top[0]->gpu_data(),
        Norms(top)->gpu_data(), top[0]->gpu_diff(), num_, dim_,
        bottom[0]->mutable_gpu_diff(), NULL);
  });
  if (bp_norm_) {
    // d||x_i|| / dx_i is the normalised row itself (N small axpys: the
    // norms' diff is read on the host).
    const Dtype* norm_diff = top[1]->cpu_diff();
    for (int i = 0; i < num_; ++i) {
      caffe_gpu_axpy(dim_, norm_diff[i], top[0]->gpu_data() + i * dim_,
          bottom[0]->mutable_gpu_diff() + i * dim_);
    }
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(NormalizeLayer);

}  // namespace caffe
