#!/usr/bin/env bash
# Installs perchd as a systemd service on Raspberry Pi OS (or any systemd Linux).
#
#   sudo ./install.sh [--binary PATH] [--root DIR] [--dry-run]
#
# It creates the `perch` system user, /etc/perch (root:perch 0750) and /var/lib/perch
# (perch:perch 0750, with models/ and spool/), installs the binary as
# /usr/local/bin/perchd, the unit as /etc/systemd/system/perchd.service and the example
# configuration as /etc/perch/perchd.toml (only if that file does not exist: an existing
# configuration is never overwritten), then enables the service. It does not start a
# service that is not running yet (the configuration, keys and model need putting in
# place first); it restarts one that is, so rerunning it with a new binary upgrades the
# agent. Running it again changes nothing else.
#
# --root DIR installs into the system mounted at DIR instead (an SD card image of
# Raspberry Pi OS on the build host, say): the user goes into DIR/etc/passwd, the
# service is enabled by its multi-user.target.wants link, nothing is started, and the
# binary is not run (it is usually built for another architecture than the host's).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install.sh [--binary PATH] [--root DIR] [--dry-run]

Installs perchd as a systemd service: the perch user, /etc/perch, /var/lib/perch,
/usr/local/bin/perchd, /etc/systemd/system/perchd.service, /etc/perch/perchd.toml
(kept if it exists), and enables the service. Needs root, except with --dry-run.

  --binary PATH   the perchd binary to install (default: ./perchd, else perchd beside
                  this script)
  --root DIR      install into the system mounted at DIR (e.g. a Raspberry Pi OS image)
                  instead of this one; enables but starts nothing
  --dry-run       print what would be done, change nothing
  -h, --help      this help
EOF
}

fail() {
    echo "install.sh: $1" >&2
    exit "${2:-2}"
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
binary=""
root=""
dry_run=0
while (($#)); do
    case "$1" in
        --binary)
            [[ $# -ge 2 && -n "$2" ]] || fail "--binary needs a path"
            binary="$2"
            shift 2
            ;;
        --root)
            [[ $# -ge 2 && -n "$2" ]] || fail "--root needs a path"
            root="$2"
            shift 2
            ;;
        --binary=*)
            binary="${1#*=}"
            shift
            ;;
        --root=*)
            root="${1#*=}"
            shift
            ;;
        --dry-run)
            dry_run=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            fail "unknown argument '$1' (see --help)"
            ;;
    esac
done

if ((!dry_run)) && [[ "$(id -u)" -ne 0 ]]; then
    fail "must run as root (sudo $0), or with --dry-run to see what it would do" 1
fi

if [[ -n "$root" ]]; then
    [[ -d "$root/etc" ]] || fail "--root $root: no etc/ folder there; is the image mounted?"
    root="$(cd "$root" && pwd)"
fi
user=perch
bin_dest=/usr/local/bin/perchd
unit_dest=/etc/systemd/system/perchd.service
config_dir=/etc/perch
config_dest=$config_dir/perchd.toml
state_dir=/var/lib/perch
unit_src="$here/perchd.service"
config_src="$here/perchd.toml"

if [[ -z "$binary" ]]; then
    if [[ -f ./perchd ]]; then
        binary=./perchd
    else
        binary="$here/perchd"
    fi
fi
for f in "$unit_src" "$config_src"; do
    [[ -f "$f" ]] || fail "$f is missing (run the script from a Perch checkout or release)"
done
[[ -f "$binary" ]] || fail "no perchd binary at $binary (build it, copy it here, or pass --binary PATH)"
if [[ -z "$root" ]]; then
    # A binary for another architecture (an x86 build copied to a Pi, say) fails here
    # rather than in a restart loop.
    version="$("$binary" --version 2>&1)" ||
        fail "$binary does not run on this machine ($(uname -m)): $version"
    command -v systemctl >/dev/null || ((dry_run)) ||
        fail "systemctl not found: this script sets perchd up as a systemd service"
else
    version="perchd"
fi

# Runs a command, or prints it with --dry-run.
run() {
    if ((dry_run)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

say() {
    printf '%s\n' "$*"
}

say "installing $version from $binary${root:+ into $root}"

# The user, looked up in the target system's own database (names resolve to different
# ids in an image than on the host, so files are chowned by number).
lookup() { # lookup passwd|group NAME -> id, or nothing
    if [[ -n "$root" ]]; then
        awk -F: -v n="$2" '$1 == n { print $3 }' "$root/etc/$1"
    else
        getent "$1" "$2" | cut -d: -f3 || true
    fi
}
if [[ -n "$(lookup passwd "$user")" ]]; then
    say "user $user exists"
else
    run useradd ${root:+--root "$root"} --system --user-group --home-dir "$state_dir" \
        --no-create-home --shell /usr/sbin/nologin --comment "Perch device agent" "$user"
fi
uid="$(lookup passwd "$user")"
gid="$(lookup group "$user")"
# Only a dry run gets here without the user: it prints the names.
uid="${uid:-$user}"
gid="${gid:-$user}"

run install -d -m 0750 -o 0 -g "$gid" "$root$config_dir"
run install -d -m 0750 -o "$uid" -g "$gid" "$root$state_dir" "$root$state_dir/models" \
    "$root$state_dir/spool"
run install -d -m 0755 "$root$(dirname "$bin_dest")" "$root$(dirname "$unit_dest")"
run install -m 0755 -o 0 -g 0 "$binary" "$root$bin_dest"
run install -m 0644 -o 0 -g 0 "$unit_src" "$root$unit_dest"
if [[ -e "$root$config_dest" ]]; then
    say "keeping the existing $root$config_dest"
else
    run install -m 0640 -o 0 -g "$gid" "$config_src" "$root$config_dest"
fi

started=0
if [[ -n "$root" ]]; then
    # What `systemctl enable` does for WantedBy=multi-user.target, without needing
    # systemd on the host.
    wants=/etc/systemd/system/multi-user.target.wants
    run install -d -m 0755 "$root$wants"
    run ln -sfn "$unit_dest" "$root$wants/perchd.service"
else
    run systemctl daemon-reload
    run systemctl enable perchd.service
    if systemctl is-active --quiet perchd.service 2>/dev/null; then
        run systemctl restart perchd.service
        started=1
    fi
fi

if ((dry_run)); then
    say "dry run: nothing was changed"
elif ((started)); then
    say "perchd restarted with the new binary: journalctl -u perchd -f"
else
    cat <<EOF
perchd is installed and enabled${root:+ in $root}. Before it starts:
  - edit $config_dest (broker URL, certificates, trusted keys, model path);
  - copy the broker's CA, this device's certificate and key, and the fleet's public key
    to $config_dir (readable by group $user);
  - copy the model bundle to $state_dir/models/ (readable by user $user);
  - check it: sudo -u $user $bin_dest --config $config_dest --check
then: sudo systemctl start perchd && journalctl -u perchd -f
EOF
fi
