#!/bin/sh
# Entrypoint of the transcoder image: runs the command as the unprivileged `transcoder` user
# (uid and gid 10001).
#
# Fly mounts a volume owned by root, so a container that starts as root first gives the data
# directory to that user, then drops root and every capability before it runs the command.
# A container started as another user runs the command unchanged.
set -eu

uid=10001
gid=10001

if [ "$(id -u)" -eq 0 ]; then
    data_dir="${TRANSCODER_DATA_DIR:-/data}"
    mkdir -p "$data_dir"
    chown "$uid:$gid" "$data_dir"
    exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all -- "$@"
fi
exec "$@"
