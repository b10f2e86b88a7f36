#!/usr/bin/env bash
# Checks every dashboard in deploy/grafana/ against Grafana's own dashboard types
# (@grafana/schema, the types Grafana generates from its dashboard schema) with the
# TypeScript compiler: each JSON file becomes an object literal typed as `Dashboard`, so
# a missing required field, a wrong type or a misspelt key (TypeScript's excess property
# check) fails with the path and line. `Json<T>` is the type as JSON spells it: string
# enums (ThresholdsMode...) become the union of their values. The packages come from the npm registry, pinned
# in lint/package-lock.json, into a throw-away folder. CI runs this (.ci/run); it needs
# node and npm (Debian: apt-get install npm).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/lint/package.json" "$here/lint/package-lock.json" "$work/"
(cd "$work" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
cat >"$work/tsconfig.json" <<'JSON'
{
  "compilerOptions": {
    "strict": true,
    "noEmit": true,
    "target": "es2022",
    "module": "es2022",
    "moduleResolution": "bundler",
    "skipLibCheck": true
  },
  "include": ["*.ts"]
}
JSON
count=0
for dashboard in "$here"/*.json; do
    name="$(basename "$dashboard" .json)"
    # The literal first, so the compiler's line numbers are the JSON file's.
    {
        printf 'export const dashboard: Json<Dashboard> = '
        cat "$dashboard"
        echo ';'
        echo "import type { Dashboard } from '@grafana/schema';"
        echo 'type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T'
        echo '  : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;'
    } >"$work/$name.json.ts"
    count=$((count + 1))
done
# Errors name FILE.json.ts(LINE,COLUMN): LINE and COLUMN are the JSON file's.
(cd "$work" && node_modules/.bin/tsc -p tsconfig.json)
echo "$count dashboard(s) match Grafana's Dashboard type (@grafana/schema $(node -p "require('$work/node_modules/@grafana/schema/package.json').version"))"
