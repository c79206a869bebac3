#!/usr/bin/env bash
# The sweep benchmark on one lent GPU in about 6 minutes (at most 8, by the timeouts below): the
# published shapes (random weights), Qwen3.5's again with flash-linear-attention's kernels, then
# the trained minis; bfloat16.
#
# Needs, in the repository root, the folder .whl (git-ignored; carry it):
#   .whl/*.whl           what the GPU image lacks: nnsight, dill, greenlet, pydantic, pydantic-core,
#                        annotated-types, typing-inspection, zarr, numcodecs, donfig, google-crc32c
#   .whl/kernels/*.whl   fla-core (flash-linear-attention's kernels: pure Python + Triton)
#   .whl/model-shapes/   the published shapes (a copy of ../shared/model-shapes)
# Made here (about 14 MiB; with the tracked tree, about 62 of the 64 MiB a call may carry):
#   echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
#   P="python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
#      --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
#   $P -d .whl nnsight==0.8.1 dill==0.4.1 greenlet==3.5.6 pydantic==2.14.4 pydantic_core==2.50.5 \
#      annotated-types==0.8.0 typing-inspection==0.4.5 zarr==3.1.6 numcodecs==0.16.6 \
#      donfig==0.8.1.post1 google-crc32c==1.9.0
#   $P -d .whl/kernels fla-core==0.6.0
#   mkdir -p .whl/model-shapes && cp ../shared/model-shapes/*.json .whl/model-shapes/
# The image's own transformers (5.17 when last read), torch, xarray, pandas, rich and pyyaml are used.
# Call (device tool): command "BENCH_COMMIT=<commit> bash benchmarks/gpu_run.sh", carry [".whl"],
# timeout_s 540. Results come back under $OUT: sweep-gpu.md (the tables), *.json, log.txt.
# BENCH_DRY=1 runs the same steps on the CPU with tiny random models and no installs (a check of
# this script, not a measurement).
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
export PYTHONUNBUFFERED=1 BENCH_COMMIT=${BENCH_COMMIT:-unknown} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
{
if [ -n "${BENCH_DRY:-}" ]; then
    export PYTHONPATH=$PWD
    SITE_FLA=$PWD
    DEV="--device cpu --dtype float32 --threads 1 --context 64 --stride 32 --repeats 1 --streams 2"
    SHAPES="random:qwen3_5_text,random:falcon_h1"; MINIS="random:qwen2"; FLA="random:qwen3_5_text"
    SHAPE_TOKENS=200; MINI_TOKENS=200
else
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/*.whl failed"; exit 1; }
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-fla \
        .whl/kernels/*.whl || echo "installing the kernels failed: the fla run will be skipped"
    export PYTHONPATH=/tmp/site:$PWD
    SITE_FLA=/tmp/site-fla
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    # carry in 4 streams (a batch of 4 rows; 3 warm-ups of context - chunk tokens)
    DEV="--device cuda --dtype bfloat16 --repeats 10 --streams 4 --shapes .whl/model-shapes"
    # Falcon-H1 last: 73 conditions, the longest; a model cut off by its timeout loses only itself
    SHAPES="shape:qwen3.5-0.8b,shape:qwen2.5-0.5b,shape:falcon-h1-0.5b"; MINIS="mini-qwen3.5,mini-falcon-h1,mini-qwen2.5"
    FLA="shape:qwen3.5-0.8b"
    SHAPE_TOKENS=4096; MINI_TOKENS=16384
fi
$PY - <<'EOF' || { echo "the imports the benchmark needs failed (see above)"; exit 1; }
import importlib.metadata as md
import torch, transformers, nnsight, xarray, zarr, pydantic  # noqa: F401  (what the runner imports)
def have(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"
print("python packages:", {p: have(p) for p in ("torch", "transformers", "nnsight", "xarray", "zarr", "numcodecs",
                                                "pydantic", "numpy", "pandas", "triton", "fla-core")})
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
MD=$OUT/sweep-gpu.md
COMMON="$DEV --batch-size 8 --out $MD"
echo "== published shapes, no fused kernels ($(date -u +%T))"
timeout 210 $PY -m benchmarks.sweep $COMMON --models "$SHAPES" --tokens $SHAPE_TOKENS --json $OUT/shapes.json
echo "== Qwen3.5 shape with flash-linear-attention ($(date -u +%T))"
if PYTHONPATH=$SITE_FLA:$PYTHONPATH $PY -c "import fla" 2>/dev/null; then
    # the first calls autotune fla's Triton kernels (tens of seconds)
    PYTHONPATH=$SITE_FLA:$PYTHONPATH timeout 150 $PY -m benchmarks.sweep $COMMON --models "$FLA" \
        --tokens $SHAPE_TOKENS --json $OUT/fla.json
else
    echo "fla does not import here: skipped"
fi
echo "== the trained minis ($(date -u +%T))"
timeout 90 $PY -m benchmarks.sweep $COMMON --models "$MINIS" --tokens $MINI_TOKENS --json $OUT/minis.json
echo "== done ($(date -u +%T))"
} 2>&1 | grep --line-buffered -v "Loading weights\|^W[0-9]* " | tee "$LOG"
