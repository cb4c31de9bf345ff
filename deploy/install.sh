#!/bin/sh
# Install edged as a systemd service, or remove it. Safe to run again: an upgrade is
# the same command, and an existing config, credential or env file is never touched.
# Field guide: docs/deploy.md.
set -eu

usage() {
    cat <<'EOF'
usage: deploy/install.sh [--prefix DIR] [--destdir DIR] [--uninstall] [--no-user] [--no-venv]

  --prefix DIR   where the venv and shared files go (default /opt/edged)
  --destdir DIR  stage everything under DIR instead of / (packaging, tests):
                 no user, no ownership changes, no systemctl
  --uninstall    remove the units, the venv and the user; keep /etc/edged
                 and /var/lib/edged
  --no-user      do not create (or remove) the edged user and groups
  --no-venv      do not create the venv nor install the project into it
  PYTHON=...     the interpreter for the venv (default python3, 3.11 or newer)
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

PREFIX=/opt/edged
DESTDIR=
UNINSTALL=0
WITH_USER=1
WITH_VENV=1
while [ $# -gt 0 ]; do
    case $1 in
        --prefix | --destdir)
            if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a directory"; fi
            if [ "$1" = --prefix ]; then PREFIX=$2; else DESTDIR=$2; fi
            shift 2
            ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --no-user) WITH_USER=0; shift ;;
        --no-venv) WITH_VENV=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case $PREFIX in
    *[!A-Za-z0-9._/-]*) die "--prefix may hold only letters, digits and . _ / -: $PREFIX" ;;
    /*) PREFIX=${PREFIX%/} ;;
    *) die "--prefix must be an absolute path: $PREFIX" ;;
esac
[ -n "$PREFIX" ] || die "--prefix cannot be /"

umask 022
SRC=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    [ "$DESTDIR" != / ] || DESTDIR=
fi
# Staged installs belong to whoever packages them: no accounts, owners or systemctl.
LIVE=0
[ -n "$DESTDIR" ] || LIVE=1
[ "$LIVE" = 0 ] || [ "$(id -u)" = 0 ] || die "run as root (sudo), or stage with --destdir"
[ "$LIVE" = 1 ] || WITH_USER=0

UNITS="$DESTDIR/etc/systemd/system"
CONF="$DESTDIR/etc/edged"
UDEV_RULE="$DESTDIR/etc/udev/rules.d/60-edged-gpio.rules"
VENV="$DESTDIR$PREFIX/venv"
SHARE="$DESTDIR$PREFIX/share/edged"
DOC="$DESTDIR$PREFIX/share/doc/edged"
# The groups of the devices edged opens: cameras, serial boards, GPIO buttons.
DEVICE_GROUPS="video dialout gpio"

systemd_running() {
    [ "$LIVE" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# Mode and, on a live install, group edged: the service reads but never writes these.
own() {
    mode=$1
    shift
    chmod "$mode" "$@"
    if [ "$LIVE" = 1 ] && getent group edged >/dev/null; then chgrp edged "$@"; fi
}

ensure_accounts() {
    for group in $DEVICE_GROUPS edged; do
        getent group "$group" >/dev/null || groupadd --system "$group"
    done
    if ! getent passwd edged >/dev/null; then
        nologin=/usr/sbin/nologin
        [ -x "$nologin" ] || nologin=/sbin/nologin
        [ -x "$nologin" ] || nologin=/bin/false
        # Home is the StateDirectory= the unit creates at start.
        useradd --system --gid edged --home-dir /var/lib/edged --no-create-home \
            --shell "$nologin" --comment "edged edge-vision daemon" edged
    fi
}

install_venv() {
    python=${PYTHON:-python3}
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$python is missing or older than 3.11 (set PYTHON=/path/to/python3.11)"
    [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$SRC"
}

# The units name /opt/edged; a different --prefix is written into the installed copies.
install_unit() {
    mkdir -p "$UNITS"
    sed "s#/opt/edged/#$PREFIX/#g" "$SRC/systemd/$1" >"$UNITS/$1.tmp"
    chmod 0644 "$UNITS/$1.tmp"
    mv -f "$UNITS/$1.tmp" "$UNITS/$1"
}

install_shared() {
    # Replaced wholesale: nothing under the prefix is the site's own.
    rm -rf "$SHARE" "$DOC"
    mkdir -p "$SHARE/examples" "$DOC"
    for dir in models pipelines; do
        if [ -d "$SRC/$dir" ]; then cp -R "$SRC/$dir" "$SHARE/$dir"; fi
    done
    for example in "$SRC"/deploy/*.toml; do
        if [ -f "$example" ]; then cp "$example" "$SHARE/examples/"; fi
    done
    cp "$SRC/docs/deploy.md" "$DOC/deploy.md"
}

install_config() {
    mkdir -p "$CONF/credentials" "$CONF/models"
    own 0750 "$CONF" "$CONF/models"
    chmod 0700 "$CONF/credentials"
    # LoadCredential= fails the start when its file is missing; empty means no password.
    if [ ! -e "$CONF/credentials/mqtt-password" ]; then
        : >"$CONF/credentials/mqtt-password"
        chmod 0600 "$CONF/credentials/mqtt-password"
    fi
    if [ -e "$CONF/edged.toml" ]; then
        echo "kept $CONF/edged.toml"
    elif [ -f "$SRC/deploy/lab-bench.toml" ]; then
        cp "$SRC/deploy/lab-bench.toml" "$CONF/edged.toml"
        own 0640 "$CONF/edged.toml"
        echo "wrote $CONF/edged.toml from deploy/lab-bench.toml: edit it for this site"
    else
        echo "no $CONF/edged.toml yet: start from $PREFIX/share/edged/examples/"
    fi
    # After an --uninstall the group is new: give it back what the service reads.
    if [ "$LIVE" = 1 ] && getent group edged >/dev/null; then
        find "$CONF" -maxdepth 1 -name '*.toml' -exec chgrp edged {} +
        chgrp -R edged "$CONF/models"
    fi
}

install_udev_rule() {
    # Distributions without a gpio group leave /dev/gpiochip* to root alone.
    mkdir -p "$(dirname "$UDEV_RULE")"
    printf '%s\n' '# edged: buttons on GPIO lines, for the service user via the gpio group' \
        'SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"' >"$UDEV_RULE"
    chmod 0644 "$UDEV_RULE"
    if [ "$LIVE" = 1 ] && command -v udevadm >/dev/null 2>&1; then
        udevadm control --reload-rules 2>/dev/null || true
        udevadm trigger --subsystem-match=gpio 2>/dev/null || true
    fi
}

do_install() {
    if [ "$WITH_USER" = 1 ]; then ensure_accounts; fi
    if [ "$WITH_VENV" = 1 ]; then install_venv; fi
    install_unit edged.service
    install_unit edged@.service
    install_udev_rule
    install_shared
    install_config
    if systemd_running; then
        systemctl daemon-reload
        # An upgrade takes effect in running services; stopped ones stay stopped.
        systemctl try-restart edged.service 'edged@*.service' || true
    fi
    cat <<EOF
installed edged under $DESTDIR$PREFIX, units in $UNITS
next: edit /etc/edged/edged.toml, then
  $PREFIX/venv/bin/edged check /etc/edged/edged.toml
  systemctl enable --now edged
  journalctl -u edged -f
EOF
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now edged.service 2>/dev/null || true
        for unit in $(systemctl list-units --all --plain --no-legend 'edged@*.service' |
            awk '{print $1}'); do
            systemctl disable --now "$unit" 2>/dev/null || true
        done
    fi
    # The units and their enablement links (multi-user.target.wants/...).
    if [ -d "$UNITS" ]; then
        find "$UNITS" \( -name edged.service -o -name 'edged@*.service' \) \
            \( -type f -o -type l \) -exec rm -f {} +
    fi
    rm -f "$UDEV_RULE"
    rm -rf "$VENV" "$SHARE" "$DOC" "$DESTDIR/var/cache/edged"
    for dir in "$DESTDIR$PREFIX/share/doc" "$DESTDIR$PREFIX/share" "$DESTDIR$PREFIX"; do
        rmdir "$dir" 2>/dev/null || true
    done
    if [ "$WITH_USER" = 1 ] && getent passwd edged >/dev/null; then
        # The device groups stay: other software uses them.
        userdel edged
        if getent group edged >/dev/null; then groupdel edged; fi
    fi
    if systemd_running; then systemctl daemon-reload; fi
    echo "removed edged; kept the config in $CONF and the state in $DESTDIR/var/lib/edged"
    for dropin in "$UNITS"/edged.service.d "$UNITS"/edged@*.service.d; do
        if [ -d "$dropin" ]; then echo "kept the drop-in $dropin"; fi
    done
}

if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi
