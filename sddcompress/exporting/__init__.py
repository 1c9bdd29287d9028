"""Torch side of the export stage: write the ONNX file and the preprocessed tensor file, check parity."""
