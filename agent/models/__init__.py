"""Model files: layer profiles (ONNX and TFLite read into one IR)."""
