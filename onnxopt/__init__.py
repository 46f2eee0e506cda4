"""onnxopt: post-training optimizer for exported ONNX models."""

__version__ = "0.1.0"
