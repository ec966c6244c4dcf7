#!/usr/bin/env bash
# Build the lab node image once: debootstrap bookworm + the packages in image.packages + the operator's
# account, as a provisioned production host has them (the deploy brings the service and its
# wheelhouse). Tagged with a hash of its recipe; an existing tag is reused.
# Usage: lab/build-image.sh [--print-tag]
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="$PWD/lab/containers.conf"
RECIPE_HASH=$(cat lab/build-image.sh lab/image.packages | sha256sum | cut -c1-12)
TAG="localhost/ttslab-node:$RECIPE_HASH"
if [ "${1:-}" = "--print-tag" ]; then echo "$TAG"; exit 0; fi
if podman image exists "$TAG"; then echo "$TAG"; exit 0; fi

MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d /var/tmp/ttslab-image.XXXXXX)
trap 'umount -R "$WORK/root/proc" 2>/dev/null || true; rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
started=$(date +%s)
echo "building $TAG (debootstrap from $MIRROR)" >&2
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
mount -t proc proc "$ROOT/proc"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Services must not start inside the chroot.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
chroot "$ROOT" apt-get update -qq
grep -v '^#' lab/image.packages | xargs chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log" >&2; exit 1; }
chroot "$ROOT" apt-get clean
rm -f "$ROOT/usr/sbin/policy-rc.d"
umount "$ROOT/proc"
# Lab hosts: sshd with keys only, systemd as PID 1, a machine id per container (systemd makes one).
sed -i 's/^#\?PermitRootLogin.*/PermitRootLogin prohibit-password/; s/^#\?PasswordAuthentication.*/PasswordAuthentication no/' \
  "$ROOT/etc/ssh/sshd_config"
# The operator's account, as on production hosts: `deploy`, sudo without a password; Ansible logs in
# as it and becomes root (inventory/lab/group_vars/all.yml). The lab's own key is bind-mounted at
# /etc/ssh/lab_authorized_keys (containers.yml) and lets in `deploy` only: nothing logs in as root
# with it. ~/.ssh/authorized_keys stays the roles' (the receiver's key for deploy on the pair; the nas
# role's sshfs clients for root on the NAS, the kernel-NFS stand-in).
chroot "$ROOT" useradd --create-home --shell /bin/bash --uid 1500 deploy
echo 'deploy ALL=(ALL:ALL) NOPASSWD: ALL' > "$ROOT/etc/sudoers.d/deploy"
chmod 0440 "$ROOT/etc/sudoers.d/deploy"
printf 'Match User deploy\n    AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/lab_authorized_keys\n' \
  >> "$ROOT/etc/ssh/sshd_config"
rm -f "$ROOT"/etc/ssh/ssh_host_*        # generated per container at first boot (below)
mkdir -p "$ROOT/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  > "$ROOT/etc/systemd/system/ssh.service.d/hostkeys.conf"
# Packaged services start only when a role asks for them.
for unit in redis-server nginx keepalived prometheus prometheus-alertmanager prometheus-blackbox-exporter \
            prometheus-node-exporter; do
  rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/$unit.service"
done
: > "$ROOT/etc/machine-id"
tar -C "$ROOT" -c . | podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' - "$TAG" >/dev/null
echo "built $TAG in $(( $(date +%s) - started )) s" >&2
echo "$TAG"
