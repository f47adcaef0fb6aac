#!/usr/bin/env bash
# The NixOS guest's half of docs/guest-contract.md: reads pcr.* parameters from the kernel
# command line (the worker appends them) and configures the guest accordingly.
#
#   pcr-guest-setup network        address, default route, DNS, host name
#   pcr-guest-setup secrets        mount the share tagged "secrets" read-only at /run/secrets
#   pcr-guest-setup ready          print "pcr-guest: ready" on the console
#   pcr-guest-setup exited         print "pcr-guest: entrypoint exit=<n>" (systemd ExecStopPost)
#
# For tests: PCR_CMDLINE_FILE replaces /proc/cmdline, PCR_DRY_RUN=1 prints commands instead of
# running them, PCR_CONSOLE replaces /dev/console.
set -euo pipefail

cmdline_file=${PCR_CMDLINE_FILE:-/proc/cmdline}
console=${PCR_CONSOLE:-/dev/console}
iface=${PCR_IFACE:-eth0}
secrets_dir=/run/secrets

run() {
  if [[ ${PCR_DRY_RUN:-} == 1 ]]; then echo "$*"; else "$@"; fi
}

fail() {
  echo "pcr-guest: $*" >&2
  exit 1
}

# Value of the last NAME=VALUE word on the command line; empty when absent.
param() {
  local name=$1 word value=""
  local -a words
  read -r -a words <"$cmdline_file"
  for word in "${words[@]}"; do
    if [[ $word == "$name="* ]]; then value=${word#"$name="}; fi
  done
  printf '%s' "$value"
}

ipv4='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}'

setup_network() {
  local address gateway dns hostname
  address=$(param pcr.ip)
  gateway=$(param pcr.gw)
  dns=$(param pcr.dns)
  hostname=$(param pcr.hostname)

  if [[ -n $hostname ]]; then
    [[ $hostname =~ ^[A-Za-z0-9.-]{1,253}$ ]] || fail "bad pcr.hostname=$hostname"
    if [[ ${PCR_DRY_RUN:-} == 1 ]]; then echo "hostname $hostname"; else echo "$hostname" >/proc/sys/kernel/hostname; fi
  fi

  if [[ -z $address ]]; then
    echo "pcr-guest: no pcr.ip, networking left unconfigured"
    return 0
  fi
  [[ $address =~ ^${ipv4}/([0-9]|[12][0-9]|3[0-2])$ ]] || fail "bad pcr.ip=$address"
  [[ -z $gateway || $gateway =~ ^${ipv4}$ ]] || fail "bad pcr.gw=$gateway"
  [[ -z $dns || $dns =~ ^${ipv4}$ ]] || fail "bad pcr.dns=$dns"

  # The NIC may appear a moment after this unit starts.
  if [[ ${PCR_DRY_RUN:-} != 1 ]]; then
    local tries=0
    until ip link show dev "$iface" >/dev/null 2>&1; do
      tries=$((tries + 1))
      if ((tries > 100)); then fail "no network interface $iface"; fi
      sleep 0.1
    done
  fi

  run ip link set dev "$iface" up
  run ip address replace "$address" dev "$iface"
  if [[ -n $gateway ]]; then run ip route replace default via "$gateway" dev "$iface"; fi
  if [[ -n $dns ]]; then
    if [[ ${PCR_DRY_RUN:-} == 1 ]]; then
      echo "resolvconf -m 0 -a $iface <<< nameserver $dns"
    else
      printf 'nameserver %s\n' "$dns" | resolvconf -m 0 -a "$iface"
    fi
  fi
}

setup_secrets() {
  local share options
  share=$(param pcr.share)
  case $share in
    "")
      echo "pcr-guest: no pcr.share, no secrets"
      return 0
      ;;
    9p) options=trans=virtio,version=9p2000.L,msize=1048576,ro ;;
    virtiofs) options=ro ;;
    *) fail "unknown pcr.share=$share (expected 9p or virtiofs)" ;;
  esac
  run mkdir -p -m 0700 "$secrets_dir"
  run mount -t "$share" -o "$options" secrets "$secrets_dir"
}

say() {
  if [[ ${PCR_DRY_RUN:-} == 1 ]]; then echo "$1"; else echo "$1" >>"$console"; fi
}

case ${1:-} in
  network) setup_network ;;
  secrets) setup_secrets ;;
  ready) say "pcr-guest: ready" ;;
  exited) say "pcr-guest: entrypoint exit=${EXIT_STATUS:-unknown}" ;;
  *) fail "usage: pcr-guest-setup network|secrets|ready|exited" ;;
esac
