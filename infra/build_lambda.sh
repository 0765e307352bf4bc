#!/usr/bin/env bash
# Build the Lambda deployment package into a directory (what `sam build` zips and uploads).
#
#   infra/build_lambda.sh OUT_DIR
#
# OUT_DIR receives the core (dinoembed/) with the AWS adapter (dinoembed/handler/, from
# handler/; no watcher code) and their dependencies
# as wheels for the Lambda platform: CPython 3.12 on x86_64 (LAMBDA_ARCH=arm64: aarch64),
# whatever machine runs the build.
#
# DINOEMBED_EXTRAS picks the extras installed with the core: "lambda" (the embedding
# function, the default) or "lambda-http" (the Function URL function: the HTTP app too).
#
# DINOEMBED_BUNDLE_MODEL=/path/model.onnx bundles a model: its sha256 is checked against
# DINOEMBED_BUNDLE_SHA256 (default: the pinned DINOv2 ViT-S/14 digest when the file is
# named dinov2_vits14.onnx; other files without one are recorded unchecked), a mismatch
# stops the build, and it is copied to OUT_DIR/model/ with model/bundle.json, where the
# function finds it with no setting. To fit Lambda's 250 MB, a bundled build leaves out
# boto3, botocore, s3transfer and jmespath: the python3.12 runtime provides them.
# Sources are staged in a temporary folder, so the checkout is never written to.
set -euo pipefail

PINNED_NAME=dinov2_vits14.onnx
PINNED_SHA256=4df36ef0716a8f17d984fc7546a3a5d670fda6911eb298592250cb9e26756063

out=${1:?usage: infra/build_lambda.sh OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
lambda_python=${LAMBDA_PYTHON:-3.12}
# Lambda's python3.12 runtime is Amazon Linux 2023 (glibc 2.34): manylinux2014 (glibc 2.17)
# and manylinux_2_28 wheels both run there (recent onnxruntime ships only the latter).
case "${LAMBDA_ARCH:-x86_64}" in
    x86_64) machine=x86_64 ;;
    arm64 | aarch64) machine=aarch64 ;;
    *) echo "error: LAMBDA_ARCH must be x86_64 or arm64, not ${LAMBDA_ARCH}" >&2; exit 2 ;;
esac
platforms=${LAMBDA_PLATFORMS:-manylinux2014_$machine manylinux_2_28_$machine}
platform_args=()
for platform in $platforms; do
    platform_args+=(--platform "$platform")
done

bundle=${DINOEMBED_BUNDLE_MODEL:-}
if [ -n "$bundle" ]; then
    # Checked before anything is built: a wrong model fails fast.
    [ -f "$bundle" ] || { echo "error: DINOEMBED_BUNDLE_MODEL=$bundle is not a file" >&2; exit 1; }
    expected=${DINOEMBED_BUNDLE_SHA256:-}
    if [ -z "$expected" ] && [ "$(basename "$bundle")" = "$PINNED_NAME" ]; then
        expected=$PINNED_SHA256
    fi
    actual=$(sha256sum "$bundle" | cut -d' ' -f1)
    if [ -n "$expected" ] && [ "$actual" != "$expected" ]; then
        echo "error: $bundle has sha256 $actual, expected $expected" \
            "(set DINOEMBED_BUNDLE_SHA256 for another model)" >&2
        exit 1
    fi
    [ -n "$expected" ] || echo "warning: no DINOEMBED_BUNDLE_SHA256 for $bundle; recording $actual"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage/src" "$out"
for part in pyproject.toml README.md; do
    cp "$root/$part" "$stage/src/"
done
# dinoembed/handler is a symlink to ../handler: -L copies the files. The function never
# runs the folder watcher, so dinoembed/watcher stays out of the package.
cp -RL "$root/dinoembed" "$stage/src/"
rm -rf "$stage/src/dinoembed/watcher"
find "$stage/src" -name __pycache__ -type d -prune -exec rm -rf {} +

"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    --wheel-dir "$stage/wheel" "$stage/src"
wheel=$(ls "$stage"/wheel/dinoembed-*.whl)

"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --upgrade \
    "${platform_args[@]}" --implementation cp --python-version "$lambda_python" \
    --only-binary=:all: --target "$out" "${wheel}[${DINOEMBED_EXTRAS:-lambda}]"

# What the function never imports: console scripts, pip's bytecode (compiled again below,
# for the runtime's Python), the libraries' own test suites, and ONNX Runtime's
# model-conversion tools.
# libonnxruntime.so is ONNX Runtime's C API library (34 MB); the Python binding
# (onnxruntime_pybind11_state*.so) is self-contained and does not load it (readelf -d).
rm -rf "$out/bin" "$out"/onnxruntime/{transformers,quantization,tools}
rm -f "$out"/onnxruntime/capi/libonnxruntime.so*
find "$out" \( -name __pycache__ -o -name tests \) -type d -prune -exec rm -rf {} +

if [ -n "$bundle" ]; then
    # The python3.12 runtime puts its own boto3/botocore on sys.path after the package.
    # Its botocore may predate S3 Vectors (2025): the service's model files from the botocore
    # this build resolved (the lambda extra's boto3>=1.40) go to aws-data/, which the
    # template puts on AWS_DATA_PATH, so the runtime's botocore knows the s3vectors client.
    if [ ! -d "$out/botocore/data/s3vectors" ]; then
        echo "error: the botocore installed for the package has no s3vectors model" >&2
        exit 1
    fi
    rm -rf "$out/aws-data"
    mkdir -p "$out/aws-data"
    cp -R "$out/botocore/data/s3vectors" "$out/aws-data/s3vectors"
    rm -rf "$out"/{boto3,botocore,s3transfer,jmespath} "$out"/{boto3,botocore,s3transfer,jmespath}-*.dist-info
    rm -rf "$out/model"
    mkdir -p "$out/model"
    name=$(basename "$bundle")
    cp "$bundle" "$out/model/$name"
    size=$(stat -c %s "$bundle")
    printf '{"file": "%s", "sha256": "%s", "size": %s}\n' "$name" "$actual" "$size" \
        >"$out/model/bundle.json"
fi

# Bytecode for the runtime's Python, compiled here: /var/task is read-only on Lambda, so
# without it every cold start compiles every module it imports again, in memory (the
# bundled cold start: 1.33 s without, 0.83 s with; benchmarks/lambda_bundled.py, which
# runs with -B as Lambda cannot write either). unchecked-hash: the .pyc files are used
# without comparing source mtimes, which a zip round trip does not keep exactly; the
# package never changes after the build.
pyc_python=
for candidate in "$python" "python$lambda_python"; do
    if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$lambda_python" ]; then
        pyc_python=$candidate
        break
    fi
done
if [ -n "$pyc_python" ]; then
    "$pyc_python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$out" >/dev/null
else
    echo "warning: no Python $lambda_python to precompile with; each cold start compiles the code" >&2
fi

# Lambda refuses zip packages above 250 MB unzipped (the container image allows 10 GB).
size_mb=$(du -sm --apparent-size "$out" | cut -f1)
echo "Lambda package: ${size_mb} MB unzipped in $out"
if [ "$size_mb" -ge 250 ]; then
    echo "error: ${size_mb} MB exceeds Lambda's 250 MB limit for zip packages;" \
        "download the model at cold start (DINOEMBED_MODEL_URL) or use infra/Dockerfile" >&2
    exit 1
fi
