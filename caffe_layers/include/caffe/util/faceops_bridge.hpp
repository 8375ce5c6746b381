#ifndef CAFFE_UTIL_FACEOPS_BRIDGE_HPP_
#define CAFFE_UTIL_FACEOPS_BRIDGE_HPP_

#include <stdint.h>

#include <cmath>
#include <exception>

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

namespace caffe {

/**
 * @brief Copies the class labels held by `label` (Caffe stores them as Dtype)
 *        into `*buffer` as the int64 array the faceops core takes, checking
 *        that each one is a whole number, >= 0 and, when num_classes > 0,
 *        < num_classes.  `*buffer` is (re)allocated to fit.
 */
template <typename Dtype>
void FaceopsLabels(const LayerParameter& param, const Blob<Dtype>& label,
    int num_classes, shared_ptr<SyncedMemory>* buffer) {
  const size_t size = label.count() * sizeof(int64_t);
  if (!*buffer || (*buffer)->size() != size) {
    buffer->reset(new SyncedMemory(size));
  }
  const Dtype* values = label.cpu_data();
  int64_t* labels = static_cast<int64_t*>((*buffer)->mutable_cpu_data());
  for (int i = 0; i < label.count(); ++i) {
    CHECK(values[i] == std::floor(values[i]) && values[i] >= 0)
        << param.type() << " layer '" << param.name() << "': bottom[1] (label) "
        << "holds " << values[i] << " at index " << i
        << "; expected class indices (whole numbers >= 0)";
    if (num_classes > 0) {
      CHECK_LT(values[i], num_classes) << param.type() << " layer '"
          << param.name() << "': bottom[1] (label) at index " << i
          << " is out of range; expected labels < num_output = " << num_classes;
    }
    labels[i] = static_cast<int64_t>(values[i]);
  }
}

/**
 * @brief Runs a call into the faceops core, which throws
 *        std::invalid_argument on bad input: the error becomes a fatal
 *        Caffe error that names the layer.
 */
template <typename Call>
void FaceopsCall(const LayerParameter& param, Call call) {
  try {
    call();
  } catch (const std::exception& error) {
    LOG(FATAL) << param.type() << " layer '" << param.name() << "': "
               << error.what();
  }
}

}  // namespace caffe

#endif  // CAFFE_UTIL_FACEOPS_BRIDGE_HPP_
