#!/usr/bin/env bash
# Get the one data set that needs no internet beyond the package registries: Fashion-MNIST from
# the Debian package dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist), when
# running as root on a Debian/Ubuntu machine. Never fatal: without it, cbnotes asks torchvision
# to download Fashion-MNIST (main job), and the test that reads the real files is skipped.
set -uo pipefail
FMNIST_DEB_DIR=/usr/share/datasets/fashion-mnist
if [ -d "$FMNIST_DEB_DIR" ]; then
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "Installing Fashion-MNIST from Debian (package dataset-fashion-mnist) ..."
    if { timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; then
        exit 0
    fi
fi
echo "Fashion-MNIST is not in $FMNIST_DEB_DIR (as root: apt-get install dataset-fashion-mnist);" \
    "torchvision will download it where it may."
