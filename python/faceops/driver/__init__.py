"""The training driver behind `faceops train`, `faceops eval` and `faceops export`:
identity-folder data (data), the embedding network (model), the verification
protocol (evaluate), ONNX export (export), Semi-Siamese Training (sst) and the
training loop (train).  NumPy and OpenCV only; CuPy with --device cuda."""
