#!/usr/bin/env bash
# Every shell script in the repository through shellcheck, following the files they source.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing shellcheck:shellcheck
git ls-files -z '*.sh' .ci/run .ci/setup appliance/files/gantry-second-chance deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm | xargs -0 shellcheck -x
echo "shellcheck: $(git ls-files '*.sh' .ci/run .ci/setup appliance/files/gantry-second-chance deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm | wc -l) scripts clean"
