#!/usr/bin/env bash
# Get what the journal-club slides need offline (scripts/notebooks.py slides, tests/test_slides.py):
# reveal.js and MathJax from npm into .cache/slide-assets/node_modules (git-ignored; the slides
# command copies the few files a deck needs next to it), and, as root on Debian/Ubuntu, Chromium
# from apt for the test that opens a deck in a real browser. Never fatal and time-limited like
# scripts/get_data.sh: without these the slides command says how to get them and the slide tests
# are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
REVEAL_VERSION=5.2.1
MATHJAX_VERSION=3.2.2
PREFIX=.cache/slide-assets

have_version() {  # have_version PACKAGE VERSION
    grep -qs "\"version\": \"$2\"" "$PREFIX/node_modules/$1/package.json"
}

if have_version reveal.js "$REVEAL_VERSION" && have_version mathjax "$MATHJAX_VERSION"; then
    :
elif command -v npm >/dev/null; then
    echo "Installing reveal.js $REVEAL_VERSION and MathJax $MATHJAX_VERSION from npm into $PREFIX ..."
    mkdir -p "$PREFIX"
    [ -f "$PREFIX/package.json" ] || echo '{"private": true}' >"$PREFIX/package.json"
    if ! timeout 300 npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
        "reveal.js@$REVEAL_VERSION" "mathjax@$MATHJAX_VERSION" >/dev/null; then
        echo "npm install of reveal.js/MathJax failed; the slides command and tests will say so."
    fi
else
    echo "npm not found: no offline reveal.js/MathJax for the slides (install Node.js and npm," \
        "then: bash scripts/get_slide_assets.sh)."
fi

if ! command -v chromium >/dev/null && ! [ -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "Installing Chromium from Debian (for the headless test of the slides) ..."
        if ! { timeout 300 apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
                chromium >/dev/null; }; then
            echo "Chromium could not be installed; the browser test of the slides is skipped."
        fi
    else
        echo "Chromium not found (as root: apt-get install chromium); the browser test of the" \
            "slides is skipped."
    fi
fi
exit 0
