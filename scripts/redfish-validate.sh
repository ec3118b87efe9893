#!/usr/bin/env bash
# Run DMTF's Redfish Service Validator (PyPI redfish-service-validator 3.1.x) against a pcietun
# management API, offline: the DSP8010 schema files come from the crate nv-redfish-schema 0.22
# (fetched by cargo into a throw-away manifest under target/, never compiled), our OEM CSDL is
# added beside them, and the validator runs with --skipschema so it never tries the network.
#
#   scripts/redfish-validate.sh --url http://127.0.0.1:PORT --user NAME --password-file FILE
#
# Only loopback URLs are accepted. Exit status: 0 when the validator reports no error, 1 when
# it reports errors (the report is in the log directory), 2 usage, 77 when the validator
# cannot be installed (no PyPI), so a test can skip loudly.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
url="" user="" pwfile="" logdir="$root/target/redfish-validator-logs"
while [ $# -gt 0 ]; do
    case "$1" in
        --url) url=$2; shift 2 ;;
        --user) user=$2; shift 2 ;;
        --password-file) pwfile=$2; shift 2 ;;
        --logdir) logdir=$2; shift 2 ;;
        *) echo "usage: $0 --url http://127.0.0.1:PORT --user NAME --password-file FILE [--logdir DIR]" >&2; exit 2 ;;
    esac
done
[ -n "$url" ] && [ -n "$user" ] && [ -n "$pwfile" ] || { echo "$0: --url, --user and --password-file are required" >&2; exit 2; }
case "$url" in
    http://127.*|https://127.*|http://localhost[:/]*|https://localhost[:/]*|http://\[::1\]*|https://\[::1\]*) ;;
    *) echo "$0: refusing $url: only loopback services are validated here" >&2; exit 2 ;;
esac

venv=${PCIETUN_VALIDATOR_VENV:-$root/target/redfish-validator-venv}
if [ ! -x "$venv/bin/rf_service_validator" ]; then
    echo "installing redfish-service-validator 3.1.x into $venv" >&2
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q "redfish-service-validator==3.1.*"; }; then
        echo "$0: SKIP: cannot install redfish-service-validator (no python3 venv or no PyPI)" >&2
        exit 77
    fi
fi

# The schema files: nv-redfish-schema's redfish-csdl/csdl, located through cargo metadata.
fetch="$root/target/redfish-schema-fetch"
mkdir -p "$fetch/src"
cat > "$fetch/Cargo.toml" <<'TOML'
[package]
name = "redfish-schema-fetch"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
nv-redfish-schema = "=0.22.1"
[workspace]
TOML
[ -f "$fetch/src/lib.rs" ] || echo "// only fetched, never built" > "$fetch/src/lib.rs"
(cd "$fetch" && cargo fetch -q)
crate_dir=$(cd "$fetch" && cargo metadata -q --format-version 1 | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
for p in meta["packages"]:
    if p["name"] == "nv-redfish-schema":
        print(os.path.dirname(p["manifest_path"]))
')
csdl="$crate_dir/redfish-csdl/csdl"
[ -d "$csdl" ] || { echo "$0: no CSDL folder at $csdl" >&2; exit 1; }
schemas="$root/target/redfish-schemas"
rm -rf "$schemas"
mkdir -p "$schemas"
cp "$csdl"/*.xml "$schemas"/
cp "$root/src/mgmt/redfish/Pcietun_v1.xml" "$schemas"/

rm -rf "$logdir"
mkdir -p "$logdir"
# The password goes in a private config file, not on the command line (visible in ps).
config=$(mktemp)
trap 'rm -f "$config"' EXIT
chmod 600 "$config"
printf '[Authentication]\nuser = %s\npassword = %s\n' "$user" "$(head -n1 "$pwfile")" > "$config"
set +e
"$venv/bin/rf_service_validator" --config "$config" --rhost "$url" \
    --authtype Session --schema_directory "$schemas" --skipschema --logdir "$logdir" \
    > "$logdir/stdout.txt" 2>&1
status=$?
set -e
tail -n 30 "$logdir/stdout.txt"
echo "validator exit status $status; report in $logdir" >&2
exit $(( status == 0 ? 0 : 1 ))
