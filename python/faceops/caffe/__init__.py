"""faceops for Caffe: ``python -m faceops.caffe install|uninstall`` adds the
native layers to a Caffe source tree (see caffe_layers/README.md), and
``faceops.caffe.layers`` holds the same losses as Caffe Python layers."""
