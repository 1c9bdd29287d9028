"""sddcompress deployment stage (import name `sddcompress_export`).

Torch-free: needs only numpy, onnx and onnxruntime, plus tensorrt/polygraphy for engines.
It checks and annotates ONNX files, runs them in ONNX Runtime, quantises them to INT8,
builds TensorRT engines and scores any of these artefacts on a preprocessed tensor file. The stages
every command builds artefacts with are in `chain`, their defaults in `defaults`.
"""

__all__ = ["DeployError"]

from .errors import DeployError
