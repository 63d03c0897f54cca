#!/usr/bin/env bash
# What the tests need beyond the .NET SDK, installed with apt-get when missing (as root, e.g. on a fresh CI machine);
# called by tools/test.sh. Without root it only says what is missing: those tests then fail with an install hint.
# readelf is the independent reference of the ELF dependency reader's test (tests/Onnx.Lora.Tests/Gpu).
if ! command -v readelf >/dev/null 2>&1; then
  { apt-get update -qq && apt-get install -y -qq binutils; } >/dev/null 2>&1 || echo "could not install binutils (readelf)" >&2
fi
# The data-parallel tests (tests/Onnx.Lora.Tests/Distributed) run `mpirun -np 2` and FAIL without it: install Open MPI
# (Debian's openmpi-bin brings mpirun and libmpi.so.40) when it is missing. CI runs as root on a fresh Debian machine.
if ! command -v mpirun >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Open MPI (apt-get install openmpi-bin)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openmpi-bin; } >/dev/null \
      || echo "apt-get could not install Open MPI; the MPI tests will fail" >&2
  else
    echo "mpirun not found and Open MPI cannot be installed here (not root or no apt-get); the MPI tests will fail" >&2
  fi
fi
