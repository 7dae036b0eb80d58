#!/usr/bin/env bash
# Tests health.lua with Debian's Lua 5.1 (the dialect of Argo CD's gopher-lua) against the cases in
# health_test.yaml. Installs lua5.1, lua-cjson and python3-yaml with apt-get when missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
missing=()
command -v lua5.1 >/dev/null || missing+=(lua5.1)
lua5.1 -e 'require("cjson")' 2>/dev/null || missing+=(lua-cjson)
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 - "$here" <<'PY' | lua5.1 "$here/run_tests.lua" "$here"
import json, sys, yaml
here = sys.argv[1]
tests = yaml.safe_load(open(f"{here}/health_test.yaml"))["tests"]
print(json.dumps([{"path": t["inputPath"], "want": t["healthStatus"],
                   "obj": yaml.safe_load(open(f"{here}/{t['inputPath']}"))} for t in tests]))
PY
