#!/bin/sh
# The Debian packages the tests drive as real components: curl and openssl (clients),
# prometheus (promtool checks a real scrape and the alert rules), chromium and chromium-driver
# (the dashboard in a headless browser, through selenium). Installs only what is missing, with
# apt-get as root or through sudo; where neither works it says so, and the tests that need a
# missing tool skip with the reason.
set -u
missing=""
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "install-tools: not root and no sudo; missing:$missing (their tests will skip)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: no apt-get; missing:$missing (their tests will skip)" >&2
    exit 0
fi
echo "install-tools: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -qq >/dev/null || true
# shellcheck disable=SC2086
if ! $as_root apt-get install -y -qq $missing >/dev/null; then
    echo "install-tools: apt-get could not install$missing (their tests will skip)" >&2
fi
exit 0
