#!/usr/bin/env bash
# The SDD paper's ResNet32x4 -> ResNet8x4 pair on CIFAR-100 (240 epochs; hours on a GPU), then deployment.
set -euo pipefail
sddcompress train --config cifar100_resnet32x4_resnet8x4 --model resnet32x4 --data-dir data/cifar100 --download
sddcompress distill --config cifar100_resnet32x4_resnet8x4 --data-dir data/cifar100
sddcompress export --ckpt runs/resnet8x4-from-resnet32x4-sdd-dkd-cifar100/checkpoints/best.pt --ort-int8
python benchmarks/latency.py --teacher runs/resnet32x4-cifar100/checkpoints/best.pt \
    --student runs/resnet8x4-from-resnet32x4-sdd-dkd-cifar100/checkpoints/best.pt --data-dir data/cifar100
