"""Teacher vs student accuracy and latency on every backend (torch eager/compiled, ONNX Runtime fp32/int8,
TensorRT where a GPU is present). The same code as `sddcompress benchmark`; same options.

    python benchmarks/latency.py                      # the quickstart's teacher and student
    python benchmarks/latency.py --teacher T.pt --student S.pt --data cifar100
    python benchmarks/latency.py --compare runs/benchmark-old runs/benchmark
"""

from sddcompress.cli.main import main

if __name__ == "__main__":
    import sys

    main(["benchmark", *sys.argv[1:]])
