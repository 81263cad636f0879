#!/usr/bin/env bash
# Installs the system packages that the wire-level tests need (SIPp, Kamailio and its TLS
# module, Mosquitto, Redis, Chromium, baresip). Runs unattended (CI has no standard input) and
# skips what is already present.
set -euo pipefail

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || need+=(kamailio)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# a headless browser and MQTT command-line clients for the wallboard and desktop tests
# (tests/wire/test_web_pages.py)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
# a real softphone (tests/wire/test_baresip.py: baresip 1.0 driven headless)
command -v baresip >/dev/null 2>&1 || need+=(baresip)
# the TLS module of Kamailio (tests/wire/test_tls.py: Kamailio as a TLS peer)
compgen -G '/usr/lib/*/kamailio/modules/tls.so' >/dev/null || need+=(kamailio-tls-modules)
# fail2ban-regex checks the shipped filter against real log lines (tests/unit/test_logs_ops.py)
command -v fail2ban-regex >/dev/null 2>&1 || need+=(fail2ban)
# systemd-analyze verifies the shipped unit (tests/unit/test_deploy.py)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
