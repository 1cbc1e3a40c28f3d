#!/usr/bin/env bash
# Build the Greengrass artifact: jobs-agent.zip with the agent's wheel, the wheels of its
# dependencies (so the core device needs no internet access at install time) and the config.
# Usage: greengrass/build.sh [OUTPUT_DIR]   (default: dist/greengrass)
# Then upload OUTPUT_DIR/jobs-agent.zip to the S3 URI named in greengrass/recipe.yaml and create
# the component: aws greengrassv2 create-component-version --inline-recipe fileb://greengrass/recipe.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/greengrass}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/jobs-agent/wheels" "$stage/jobs-agent/config" "$out"
python3 -m pip wheel --quiet --wheel-dir "$stage/jobs-agent/wheels" .
cp config/greengrass.yaml "$stage/jobs-agent/config/"
(cd "$stage" && python3 -m zipfile -c jobs-agent.zip jobs-agent)
mv "$stage/jobs-agent.zip" "$out/"
echo "built $out/jobs-agent.zip"
