#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on a lent GPU machine that has torch and accelerate but not
# datasets, torchdata, deepspeed or lightweight-gan (Python 3.12, x86-64; what the H200 of
# 2026-12-04 lacked). Run from the repository root on a machine with PyPI; they land in .whl/
# (git-ignored through .git/info/exclude), 13 MB in all. On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   python3 bench/gpu_check.py
set -euo pipefail
dest=.whl
mkdir -p "$dest"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# deepspeed's needs beyond that image: hjson, pydantic; lightweight-gan's: adabelief, fire, kornia, retry
python3 -m pip download -q --no-deps "${platform[@]}" -d "$dest" \
    datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 torchdata==0.11.0 \
    lightweight-gan==1.2.1 adabelief-pytorch==0.2.1 fire==0.7.1 termcolor==3.3.0 kornia==0.9.0 kornia_rs==0.2.0 \
    retry==0.9.2 decorator==5.3.1 py==1.11.0 \
    hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0
# deepspeed is published as source only: build it here without its compiled ops (DS_BUILD_OPS=0)
if ! ls "$dest"/deepspeed-0.19.8-*.whl >/dev/null 2>&1; then
    source_dir=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary=:all: deepspeed==0.19.8 -d "$source_dir"
    DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w "$dest" "$source_dir"/deepspeed-0.19.8.tar.gz
    rm -rf "$source_dir"
fi
ls "$dest"
