"""Deployment backends of a QuantizedProgram: :mod:`.inductor` (``mqcompile.compile``: torch.compile with Triton or
CPU kernels) and :mod:`.onnx` (``mqcompile.export_onnx``: INT4 QDQ for ONNX Runtime)."""
