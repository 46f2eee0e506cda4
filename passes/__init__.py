"""Graph passes of onnxopt, installed as ``onnxopt.passes``.

Every pass is an ``onnx_ir`` in-place pass: ``pass_(model) -> PassResult(model, modified)``.
Passes that can decline a node record why in ``pass_.skipped`` so reports can show it.
"""
