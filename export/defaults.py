"""The defaults of the deployment chain, declared once.

`sddcompress export`, `sddcompress-deploy`, `sddcompress benchmark` and the stage functions they call
(`chain`, `ort_quantization`, `tensorrt_engine`) all read their defaults from `DEFAULTS`, so the same
inputs give the same artefacts whichever command made them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChainDefaults:
    opset: int = 18  # what torch.onnx's exporter emits natively; TensorRT 10 and ONNX Runtime >= 1.14 run it
    atol: float = 1e-3  # largest |ONNX - PyTorch| logit difference the ONNX file may show
    min_agreement: float = 99.0  # smallest top-1 agreement (percent) between ONNX Runtime and PyTorch
    calib_size: int = 1024  # training images for INT8 (the first N of a tensor file's): 256 calibrate, the rest
    #                        score each INT8 choice (ort_quantization.split_calibration)
    calib_method: str = "auto"  # minmax, percentile, entropy, or auto: each tried, the best held-out one kept
    keep_float: str = "auto"  # layers left in float: auto, none, ends, or comma-separated node names
    max_drop: float = 0.5  # held-out top-1 points INT8 may lose before layers are kept in float
    precision: str = "fp16"  # TensorRT engine precision
    min_batch: int = 1  # the TensorRT optimisation profile
    opt_batch: int = 8
    max_batch: int = 32


DEFAULTS = ChainDefaults()
