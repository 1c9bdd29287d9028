#!/usr/bin/env bash
# The GPU checks of the training engine, in one go, on a machine with an NVIDIA GPU and PyTorch:
# the `gpu` tests, the paper recipe through the real trainer (graph and eager step), the
# per-step cost table, and the 224-px JPEG pipeline beside the resnet50 -> mobilenetv2 step. Each part is time-limited so one stall cannot take the rest down.
#   bash benchmarks/gpu_session.sh [OUT_DIR]       (OUT_DIR: where logs and JSON figures go; default bench_out)
# Packages the image may lack can be put as wheels in .whl/ beforehand; they are installed to a
# scratch folder together with this checkout, which is then first on PYTHONPATH.
set -uo pipefail
out=${1:-${OUT:-bench_out}}
mkdir -p "$out"
site=$(mktemp -d)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target "$site" . || exit 1
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "=== $name: exit $?"
  tail -n "${TAIL:-25}" "$out/$name.log"
}
part gpu_tests 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
part paper_recipe_graph 180 python3 benchmarks/paper_recipe.py --json "$out/paper_recipe_graph.json"
[ -n "${EAGER:-}" ] && part paper_recipe_eager 240 python3 benchmarks/paper_recipe.py --step eager --epochs 2 \
  --json "$out/paper_recipe_eager.json"
part train_step 180 python3 benchmarks/train_step.py --device cuda --precision bf16
part data_jpeg 120 python3 benchmarks/data.py --jpeg-folder 50 --size 224 --teacher resnet50 --student mobilenetv2 \
  --rounds 2 --step-batches 5 --pipeline-batches 5
true
