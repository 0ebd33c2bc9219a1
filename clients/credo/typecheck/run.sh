#!/usr/bin/env bash
# Type-checks this package's build against real Credo typings: that MessagePickupRepositoryClient
# is a Credo 0.5 MessagePickupRepository (and fits a 2060-style mediator's code), that
# MprQueueTransportRepository is a Credo 0.6 DidCommQueueTransportRepository, and that real
# Agent objects fit attachToCredo05Agent / attach. Not part of `npm test`: it needs Credo installed.
#   typecheck/run.sh DIR05 DIR06
# DIR05: a directory whose node_modules has @credo-ts/core 0.5.19; DIR06: one with
# @credo-ts/core and @credo-ts/didcomm 0.6.3 (e.g. the e2e agents' directories). Run `npm run build` first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$(cd "$here/../build" && pwd)"
tsc="$here/../node_modules/.bin/tsc"
check() { # dir source target tsc-options...
  local dir="$1" src="$2" out="$1/.mpr-client-typecheck-$3"
  shift 3
  sed "s|@MPR_CLIENT@|$build/index.js|" "$src" > "$out"
  trap 'rm -f "$out"' RETURN
  (cd "$dir" && "$tsc" --noEmit --strict --skipLibCheck --experimentalDecorators --esModuleInterop "$@" "$out")
}
check "$1" "$here/credo05.ts" credo05.ts --module commonjs --moduleResolution node --target ES2020
check "$2" "$here/credo06.mts" credo06.mts --module nodenext --moduleResolution nodenext --target ES2022
echo "types fit Credo 0.5 and 0.6"
