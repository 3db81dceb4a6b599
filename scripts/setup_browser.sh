#!/usr/bin/env bash
# Install Debian's headless Chromium for the report screenshot test, if it is missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "note: chromium is not installed; the report screenshot test will be skipped (apt-get install chromium)" >&2
fi
