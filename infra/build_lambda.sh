#!/usr/bin/env bash
# Build the Lambda deployment package into a directory (what `sam build` zips and uploads).
#
#   infra/build_lambda.sh OUT_DIR
#
# OUT_DIR receives the core (dinoembed/) with the AWS adapter (dinoembed/handler/, from
# handler/; no watcher code) and their dependencies
# as wheels for the Lambda platform: CPython 3.12 on x86_64, whatever
# machine runs the build. With DINOEMBED_BUNDLE_MODEL=/path/model.onnx the model file is
# copied to OUT_DIR/model/ (point DINOEMBED_MODEL_PATH at /var/task/model/<name>.onnx).
# Sources are staged in a temporary folder, so the checkout is never written to.
set -euo pipefail

out=${1:?usage: infra/build_lambda.sh OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
lambda_python=${LAMBDA_PYTHON:-3.12}
# Lambda's python3.12 runtime is Amazon Linux 2023 (glibc 2.34): manylinux2014 (glibc 2.17)
# and manylinux_2_28 wheels both run there (recent onnxruntime ships only the latter).
platforms=${LAMBDA_PLATFORMS:-manylinux2014_x86_64 manylinux_2_28_x86_64}
platform_args=()
for platform in $platforms; do
    platform_args+=(--platform "$platform")
done

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
    --only-binary=:all: --target "$out" "${wheel}[lambda]"

# What the function never imports: console scripts, bytecode (recompiled on Lambda), the
# libraries' own test suites, and ONNX Runtime's model-conversion tools.
rm -rf "$out/bin" "$out"/onnxruntime/{transformers,quantization,tools}
find "$out" \( -name __pycache__ -o -name tests \) -type d -prune -exec rm -rf {} +

if [ -n "${DINOEMBED_BUNDLE_MODEL:-}" ]; then
    mkdir -p "$out/model"
    cp "$DINOEMBED_BUNDLE_MODEL" "$out/model/"
fi

# Lambda refuses zip packages above 250 MB unzipped (the container image allows 10 GB).
size_mb=$(du -sm --apparent-size "$out" | cut -f1)
echo "Lambda package: ${size_mb} MB unzipped in $out"
if [ "$size_mb" -ge 250 ]; then
    echo "error: ${size_mb} MB exceeds Lambda's 250 MB limit for zip packages;" \
        "download the model at cold start (DINOEMBED_MODEL_URL) or use infra/Dockerfile" >&2
    exit 1
fi
