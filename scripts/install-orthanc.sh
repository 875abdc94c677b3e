#!/usr/bin/env bash
# Installs the Debian packages orthanc and orthanc-dicomweb when they are missing.
# The tests, the demo and the benchmarks run their own Orthanc process; the system
# service the package may try to start is not used.
set -euo pipefail
if [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "Installing Debian packages orthanc and orthanc-dicomweb..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
# The package may have started a system Orthanc on port 8042 where a service manager runs;
# we never use it, so leave it be. Ours runs on a free loopback port.
