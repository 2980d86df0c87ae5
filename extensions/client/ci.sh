#!/usr/bin/env bash
# CI for @kode-rpc/client: clean install, generated-types drift check, build + tests
# against the real server. Needs the kode-rpc Python package installed (python -m kode_rpc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
npm ci --no-audit --no-fund
npm run check-types
npm test
