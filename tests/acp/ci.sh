#!/usr/bin/env bash
# Installs the ACP test driver's pinned dependencies (@agentclientprotocol/sdk, ajv, zod)
# from package-lock.json, then checks that the driver loads. Run before the ACP pytest tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
npm ci --no-audit --no-fund
node driver.mjs --version
