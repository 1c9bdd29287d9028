"""Calibration in chunks of images, so that its memory does not grow with the number of images.

ONNX Runtime's histogram calibrators (percentile, entropy) keep every activation tensor of every image they
are given until they build their histograms: about 60 MB an image for a MobileNetV2 at 224 px, so 16 GB for
256 images. Given the images a chunk at a time, they build the histograms of the first chunk and add each
later chunk to them (`HistogramCollector` widens its bins where a chunk reaches past them), and the min-max
calibrator merges each chunk's ranges into the ones before (the same ranges as all at once). ONNX Runtime's
`quantize_static` does that with its `CalibStridedMinMax` option and a reader that can be restricted to a
range of batches (`ChunkedReader`).

A chunk is as many whole batches as keep its activations under `CHUNK_BYTES`, estimated from the float
tensors' shapes in the graph; a batch is smaller than asked where one batch alone would pass it (the min-max
calibrator's session holds about a batch's activations). Where every image fits in one chunk (every CIFAR
family at 16 px), calibration is one pass, in the batches asked for, as without chunks.
"""

from __future__ import annotations

import numpy as np

CHUNK_BYTES = 1 << 30  # activations a calibrator may hold at once (an estimate: the graph's float tensors)
_ELEMENT_BYTES = {1: 4, 10: 2, 11: 8, 16: 2}  # ONNX float, float16, double, bfloat16


def activation_bytes_per_image(model) -> int:
    """Bytes of every floating-point tensor the graph computes for one image (the batch axis left out), from
    the shapes in its value_info and outputs (each name once); a tensor whose shape is not fully known there is
    not counted."""
    infos = {info.name: info for info in list(model.graph.value_info) + list(model.graph.output)}
    total = 0
    for info in infos.values():
        tensor = info.type.tensor_type
        size = _ELEMENT_BYTES.get(tensor.elem_type)
        dims = tensor.shape.dim[1:]
        if size is None or not tensor.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
            continue
        total += size * int(np.prod([d.dim_value for d in dims]))
    return total


def images_fitting(bytes_per_image: int, budget: int | None = None) -> int:
    """How many images' activations stay under `budget` bytes (default `CHUNK_BYTES`); one at least."""
    return max(1, (CHUNK_BYTES if budget is None else budget) // max(1, bytes_per_image))


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, min(at_most, n)) + 1) if n % d == 0)


def calibration_batches(images: int, batch_size: int, bytes_per_image: int, budget: int | None = None
                        ) -> tuple[int, int]:
    """(images per batch, batches per chunk) for calibrating on `images` images.

    Batches are equal (the histogram calibrators stack what each batch yields) and hold at most `batch_size`
    images, fewer where one batch's activations would pass `budget` (a calibration session holds about that
    much); a chunk is the largest equal share of the batches whose activations stay under `budget` together.
    One image and one batch at least."""
    fitting = images_fitting(bytes_per_image, budget)
    batch = _largest_divisor(images, min(batch_size, fitting))
    return batch, _largest_divisor(images // batch, fitting // batch)


def chunked_reader(images: np.ndarray, batch_size: int, input_name: str):
    """An ONNX Runtime calibration reader over `images` in batches, which `set_range` restricts to a range of
    batches (what `quantize_static` calls between chunks with `CalibStridedMinMax`)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ChunkedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = list(range(0, len(images), batch_size))
            self.set_range(0, len(self.starts))

        def __len__(self) -> int:
            return len(self.starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.batches = iter(self.starts[start_index:end_index])

        def get_next(self):
            start = next(self.batches, None)
            return None if start is None else {input_name: images[start:start + batch_size]}

    return ChunkedReader()
