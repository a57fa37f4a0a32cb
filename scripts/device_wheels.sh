#!/usr/bin/env bash
# Download into .whl/ the wheels that bench/gpu.sh needs on a GPU machine with no network whose own
# python3 already has CUDA torch (this workplace's lent device machines: CPython 3.12, torch 2.11+cu130,
# torchaudio, numpy, transformers, tokenizers, tiktoken, einops, tensorboard, protobuf, httpx, pyyaml,
# scipy, lazy-loader ...). Run it where PyPI is reachable; the wheels then travel with the tree
# (the device call's carry: [".whl"]) and bench/gpu.sh installs them with `pip --no-index`.
#
#   bash scripts/device_wheels.sh
#
# The set is what bench/run.py imports (the worker, its server doors, fish-speech and the codec
# packages) less what that image holds; versions are requirements-nodeps.txt's pins and, where
# requirements.txt gives only a floor, the versions the project's tests run with. Left out on purpose:
# runpod and PyAV (not imported on the bench path), librosa's own dependencies (librosa is only
# imported there; the image has numba, scipy, scikit-learn).
#
#   DEST (.whl)  PYTHON_VERSION (3.12)  MAX_MIB (60: the device call carries 64 MiB with the tree)
#   PY (python3: any python with pip, to run pip here)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
MAX_MIB=${MAX_MIB:-60}
PY=${PY:-python3}

WHEELS=(
  # fish-speech and the codec packages it imports (requirements-nodeps.txt)
  fish-speech==0.1.0 descript-audio-codec==1.0.0 descript-audiotools==0.7.2
  flatten-dict==0.5.0 julius==0.2.8 ffmpy==1.0.0 importlib-resources==7.1.0 docstring-parser==0.18.0
  loralib==0.1.2 librosa==0.11.0 loguru==0.7.3
  hydra-core==1.3.8 omegaconf==2.3.1
  # settings and the server doors (fish_worker.settings, fish_worker.server)
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 orjson==3.13.0 ormsgpack==1.13.1
  python-multipart==0.0.34 opentelemetry-api==1.45.2  # fastapi imports opentelemetry.context
  # audio formats, conversation store and result uploads (imported by fish_worker.jobs.runner)
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0
  redis==8.1.0 boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
  # sentence ends (fish_worker.text.segmenter)
  sentencex==1.0.32
)
# Published as source only (pure Python): built into py3-none-any wheels here.
SOURCE_ONLY=(randomname==0.2.1 argbind==0.3.9 antlr4-python3-runtime==4.9.3)

rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYTHON_VERSION" --implementation cp "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DEST" "${SOURCE_ONLY[@]}"
for f in "$DEST"/*.whl; do  # a wheel built here must not be tied to this machine's Python
  case "$f" in *-none-any.whl|*-none-manylinux*.whl|*-cp${PYTHON_VERSION/./}-*.whl) ;;
    *) echo "$f does not install on CPython $PYTHON_VERSION x86_64" >&2; exit 1 ;;
  esac
done

count=$(ls "$DEST"/*.whl | wc -l)
expected=$(( ${#WHEELS[@]} + ${#SOURCE_ONLY[@]} ))
[ "$count" -eq "$expected" ] || { echo "$count wheels in $DEST, expected $expected" >&2; exit 1; }
bytes=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "$count wheels in $DEST: $mib MiB (limit $MAX_MIB MiB)"
if [ "$mib" -gt "$MAX_MIB" ]; then
  echo "too large: the device call carries at most 64 MiB with the working tree" >&2
  exit 1
fi
