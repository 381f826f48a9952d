#!/usr/bin/env bash
# Installs the third-party checkers the export tests run: the Khronos glTF validator
# (npm package `gltf-validator`, pinned) and PlayCanvas's splat converter (npm package
# `@playcanvas/splat-transform`, pinned; reads our SPZ in tests/spz.rs) into
# tests/tools/node_modules (ignored by git).
# Needs node and npm on PATH. Safe to run again: npm skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "error: node is not installed (needed by tests/export.rs and tests/spz.rs)" >&2; exit 1; }
command -v npm >/dev/null || { echo "error: npm is not installed (needed by tests/export.rs and tests/spz.rs)" >&2; exit 1; }
npm install --no-audit --no-fund --no-save --loglevel=error gltf-validator@2.0.0-dev.3.10 \
  @playcanvas/splat-transform@3.10.2
node -e "require('gltf-validator'); console.log('gltf-validator ' + require('gltf-validator/package.json').version + ' installed in ' + process.cwd() + '/node_modules')"
node node_modules/@playcanvas/splat-transform/bin/cli.mjs --version
