# Sourced by the GPU scripts run on the device machine, from the repository root: that machine has torch but
# no package index, so dpl is put on the path as a package (from this checkout's cli/ and core/), not
# pip-installed; $PY is the Python to run with.
mkdir -p /tmp/pkg/dpl && touch /tmp/pkg/dpl/__init__.py
ln -sfn "$PWD/cli" /tmp/pkg/dpl/cli && ln -sfn "$PWD/core" /tmp/pkg/dpl/core
export PYTHONPATH=/tmp/pkg PYTHONUNBUFFERED=1
PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
