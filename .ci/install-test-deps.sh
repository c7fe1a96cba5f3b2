#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine, then nothing else:
#   - Java (coco-caption METEOR 1.5), WordNet for NLTK's METEOR (Debian packages, as root);
#   - Debian's Chromium (+ a font) for the browser test: Playwright's Python package drives
#     /usr/bin/chromium, so `playwright install` (a download) is never needed;
#   - the package itself in editable mode with its test extras (pip).
# Idempotent: already-installed pieces are skipped, so a warm machine takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
[ -f /usr/share/wordnet/index.sense ] || missing+=(wordnet-sense-index)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-test-deps: apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash .ci/install-wordnet.sh

python3 -m pip install -q -e ".[test]"
