"""What ships a student: ONNX export and its parity check, the speed comparison, the model
card and the run's plots."""
