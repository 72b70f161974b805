#!/usr/bin/env bash
# GPU readiness in one command, on a machine with a CUDA GPU and sparc-eval installed (pip install -e '.[test]'):
#
#   1. the GPU tests (tests/test_gpu.py, marked gpu): a tiny model trained a few steps on the GPU and on the CPU
#      (losses compared), then every SynthScenes task scored on both (metrics compared);
#   2. ViT-B/16 evaluation throughput at 224 px, bf16 and fp32 (images/s of encode_image, batch 256), and a
#      `sparc-eval run` of synth-cls with a ViT-B/16 checkpoint in bf16 (the record's end-to-end images/s);
#   3. ViT-B/16 training step time, SPARC vs CLIP at batch 256 in bf16 (ms/step, ratio, peak memory).
#
# Everything goes to OUT (default bench/out/gpu_check): pytest's log, results.jsonl (one JSON object per figure)
# and the run's record. `--quick` shrinks every stage (tiny model, small batches, the CPU when there is no GPU) to
# check the script itself in a minute; its figures mean nothing.
#
# Example: bash bench/gpu_check.sh
# Example: bash bench/gpu_check.sh --quick
set -euo pipefail

QUICK=0
if [[ "${1:-}" == "--quick" ]]; then
    QUICK=1
elif [[ $# -gt 0 ]]; then
    echo "usage: bash bench/gpu_check.sh [--quick]" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out/gpu_check}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
export HF_HUB_OFFLINE=1

HAS_CUDA=$(python -c "import torch; print(int(torch.cuda.is_available()))")
if [[ "$HAS_CUDA" == 1 ]]; then
    DEVICE=cuda
    python -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
elif [[ "$QUICK" == 1 ]]; then
    DEVICE=cpu
    echo "no CUDA device: --quick runs every stage on the CPU (the GPU tests skip)"
else
    echo "error: no CUDA device visible to torch (run with --quick to check the script on a CPU)" >&2
    exit 2
fi

if [[ "$QUICK" == 1 ]]; then
    ARCH=tiny; EVAL_BATCH=8; TRAIN_BATCH=8; ITERS=2; WARMUP=1; LIMIT=(--limit 16)
else
    ARCH=vit-b-16; EVAL_BATCH=256; TRAIN_BATCH=256; ITERS=10; WARMUP=3; LIMIT=()
fi

echo "== 1/3 GPU tests"
set +e
python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}
set -e
if [[ "$status" != 0 ]]; then  # without CUDA (--quick on a CPU) the tests skip, which is exit 0 too
    echo "error: the GPU tests failed (exit $status); see $OUT/pytest.log" >&2
    exit 1
fi

echo "== 2/3 evaluation throughput ($ARCH)"
for precision in bf16 fp32; do
    python bench/gpu_bench.py eval --arch "$ARCH" --batch-size "$EVAL_BATCH" --precision "$precision" \
        --device "$DEVICE" --iters "$ITERS" --warmup "$WARMUP" | tee -a "$RESULTS"
done
CKPT="$OUT/ckpt-$ARCH"
rm -rf "$CKPT" "$OUT/results"
python - "$ARCH" "$CKPT" <<'EOF'
import sys

import torch

from sparc_eval.models.checkpoint import save_checkpoint
from sparc_eval.models.objectives import build_objective
from sparc_eval.models.sparc import create_model

torch.manual_seed(0)
save_checkpoint(create_model(sys.argv[1]), sys.argv[2], objective=build_objective("sparc").describe())
EOF
if [[ "$QUICK" == 1 && ! -e "$OUT/data" ]]; then
    # A small SynthScenes tree where synth-cls looks for its own (generating the card's 4,000 images takes minutes).
    python - "$OUT/data" <<'EOF'
import pathlib
import sys

from sparc_eval.data.synth import generate_synthscenes
from sparc_eval.tasks.card import load_card

data_dir = pathlib.Path(sys.argv[1])
tree = data_dir / "small-synthscenes"
generate_synthscenes(tree, seed=0, n_train=96, n_val=32, image_size=64, workers=1)
link = load_card("synth-cls").synthscenes_dir(data_dir)
link.parent.mkdir(parents=True, exist_ok=True)
link.symlink_to(tree.resolve(), target_is_directory=True)
EOF
fi
python -m sparc_eval run --task synth-cls --ckpt "$CKPT" --device "$DEVICE" --precision bf16 --batch-size "$EVAL_BATCH" \
    --out "$OUT/results" --data-dir "$OUT/data" --no-cache "${LIMIT[@]}"
python - "$OUT/results" >> "$RESULTS" <<'EOF'
import json
import pathlib
import sys

for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.record.json")):
    record = json.loads(path.read_text())
    print(json.dumps({"measure": "sparc-eval run (end to end)", "task": record["task"]["name"], "device": record["device"],
                      "precision": record["precision"], "n_samples": record["n_samples"], "images_per_s": record["throughput"]}))
EOF
tail -n 1 "$RESULTS"

echo "== 3/3 training step time, SPARC vs CLIP (ratio_to_clip) ($ARCH, batch $TRAIN_BATCH)"
python bench/gpu_bench.py train --arch "$ARCH" --batch-size "$TRAIN_BATCH" --objectives clip sparc --bf16 \
    --device "$DEVICE" --iters "$ITERS" --warmup "$WARMUP" | tee -a "$RESULTS"

echo "figures: $RESULTS"
