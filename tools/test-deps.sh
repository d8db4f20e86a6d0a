#!/usr/bin/env bash
# The programs the test suite drives besides Python: promtool (alert rules and their unit tests),
# redis-server (the shared queue), node and npm (fal's JavaScript client), chromium and
# chromedriver (the playground page). `make test` runs this first. As root on Debian/Ubuntu it
# installs what is missing with apt; otherwise it names the one command that would.
set -euo pipefail

declare -A package_of=(
  [promtool]=prometheus
  [redis-server]=redis-server
  [node]=nodejs
  [npm]=npm
  [chromium]="chromium fonts-liberation"
  [chromedriver]=chromium-driver
)
missing=()
for program in promtool redis-server node npm chromium chromedriver; do
  command -v "$program" >/dev/null 2>&1 || missing+=(${package_of[$program]})
done
((${#missing[@]})) || exit 0

install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null
else
  echo "test-deps: the tests need ${missing[*]}; install them with:" >&2
  echo "  sudo apt-get update && sudo ${install[*]}" >&2
  exit 1
fi
