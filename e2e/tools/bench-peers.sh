#!/usr/bin/env bash
# Builds (or finds cached) the peers the publish benchmark compares with, from their pinned Go
# modules like the other tools (e2e/tools/build.sh, versions.env): regctl, oras and buildx. Only
# e2e/bench-publish.sh runs this; `make test` never builds them. crane comes from the test tools.
#
# Measured cold builds on this 2-core machine (an empty Go build cache, the modules already
# downloaded): regctl 25 s, oras 44 s, buildx 167 s.
#
# Prints the cache's bin directory on the last line of standard output.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/build.sh" crane regctl oras buildx
