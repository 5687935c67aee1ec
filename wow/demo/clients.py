"""
Scripts that let real DHCP clients apply their lease inside a namespace.

Debian's own C{dhclient-script} would also rewrite C{/etc/resolv.conf} of
the machine (a namespace shares the file system), so the demo and the tests
hand dhclient (C{-sf}) and udhcpc (C{-s}) these small scripts instead: they
add or remove the address with C{ip} and append every event to a log the
tests read (to see a renewal happen).
"""

from __future__ import annotations

import os

DHCLIENT_SCRIPT = r"""#!/bin/sh
# dhclient -sf: apply the lease with ip(8); log the event.
echo "$reason ${new_ip_address:-} ${new_subnet_mask:-} ${new_domain_name_servers:-}" \
  "${new_domain_name:-} ${new_dhcp_lease_time:-} ${new_interface_mtu:-}" >> "$LOG"
case "$reason" in
  PREINIT) ip link set dev "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
      ip -4 addr flush dev "$interface"
    fi
    ip -4 addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" \
      valid_lft "${new_dhcp_lease_time:-forever}" preferred_lft "${new_dhcp_lease_time:-forever}"
    ;;
  EXPIRE|FAIL|RELEASE|STOP) ip -4 addr flush dev "$interface" ;;
esac
exit 0
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc -s: apply the lease with ip(8); log the event.
echo "$1 ${ip:-} ${subnet:-} ${dns:-} ${domain:-} ${lease:-} ${mtu:-}" >> "$LOG"
case "$1" in
  deconfig) ip link set dev "$interface" up; ip -4 addr flush dev "$interface" ;;
  bound|renew) ip -4 addr replace "$ip/$subnet" dev "$interface" ;;
  nak|leasefail) ;;
esac
exit 0
"""


def write_script(directory: str, name: str, text: str, log: str) -> str:
    """Write an executable hook script that logs to C{log}; return its path."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text.replace('>> "$LOG"', f'>> "{log}"'))
    os.chmod(path, 0o755)
    return path


def dhclient_argv(tap: str, workdir: str, *, once: bool = True, timeout: int = 20
                  ) -> list[str]:
    """dhclient in the foreground, every file it writes inside C{workdir}."""
    script = write_script(workdir, "dhclient-hook", DHCLIENT_SCRIPT,
                          os.path.join(workdir, "dhclient-events.log"))
    conf = os.path.join(workdir, "dhclient.conf")
    with open(conf, "w") as f:
        f.write(f"timeout {timeout};\nretry 1;\n"
                "request subnet-mask, domain-name-servers, domain-name, host-name, "
                "interface-mtu;\nsend host-name = \"wowdemo\";\n")
    argv = ["dhclient", "-d", "-v", "-4", "-cf", conf, "-sf", script,
            "-pf", os.path.join(workdir, "dhclient.pid"),
            "-lf", os.path.join(workdir, "dhclient.leases")]
    if once:
        argv.append("-1")
    return [*argv, tap]


def udhcpc_argv(tap: str, workdir: str, *, hostname: str = "wowudhcpc") -> list[str]:
    """busybox udhcpc in the foreground with our hook script."""
    script = write_script(workdir, "udhcpc-hook", UDHCPC_SCRIPT,
                          os.path.join(workdir, "udhcpc-events.log"))
    return ["busybox", "udhcpc", "-f", "-i", tap, "-s", script, "-t", "5", "-T", "2",
            "-x", f"hostname:{hostname}", "-p", os.path.join(workdir, "udhcpc.pid")]
