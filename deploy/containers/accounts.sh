#!/bin/sh
# The accounts of imgline's container images, with the same ids in every image, so that the
# volumes they share (the artifact store above all) have one owner whichever image made them.
# With a tmpfiles.d file as argument, also makes the directories of its "d" lines, as
# systemd-tmpfiles does on a machine with systemd (deploy/systemd/tmpfiles.d/imgline.conf).
set -eu

# --system: no subordinate ids; only imgline-build gets them, from scripts/ensure-build-user.sh
# (useradd warns that the ids are above the system range, which is what we want: no clash
# with the accounts of packages)
account() {
  groupadd --system --gid "$2" "$1"
  useradd --system --uid "$2" --gid "$2" --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$1"
}
account imgline-build 10001
account imgline-test 10002
account imgline-publish 10003
account imgline-trigger 10004
account imgline-ledger 10005
# the tester writes beside the builder in the store's shared directories
usermod --append --groups imgline-build imgline-test

if [ $# -gt 0 ]; then
  grep '^d ' "$1" | while read -r _type path mode user group _age; do
    install -d -m "$mode" -o "$user" -g "$group" "$path"
  done
fi
