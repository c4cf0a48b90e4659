"""ONNX export internals: marker translations for the ``mqcompile::`` ops and their lowering to QDQ.

The public entry points live in :mod:`.export` (``export_onnx``, ``parity``). The export runs in two steps: the
torch ONNX exporter translates the program, turning each ``mqcompile::`` op into one marker node of the private
``com.mqcompile.export`` domain (:mod:`.translate`); :mod:`.lower` then replaces every marker with standard
opset-21 nodes (INT4/INT8 ``QuantizeLinear``/``DequantizeLinear``, ``MatMul``, DABC ``Sub``/``Add``/``Gather``),
built from the markers' constant inputs. Markers exist because the exporter types every value after the program's
fake tensors (int8 codes), while the QDQ graph needs INT4 values and weights transposed and re-packed as INT4
initializers; no marker survives the export.
"""
