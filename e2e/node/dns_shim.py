"""Cluster DNS for the single-node harness (Debian has no CoreDNS): Services -> a hosts file.

Every second, ClusterIP Services become `<ip> <name>.<ns>.svc.cluster.local <name>.<ns>.svc`
and headless Services one line per ready endpoint address; `dnsmasq --hostsdir` (listening on
the bridge IP the kubelet hands pods as their nameserver) reloads the file when it changes.

    python dns_shim.py SERVER CA_FILE TOKEN_FILE HOSTS_FILE
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.request


def fetch(server: str, ctx: ssl.SSLContext, token: str, path: str) -> list[dict]:
    req = urllib.request.Request(server + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.load(resp)["items"]


def hosts_lines(services: list[dict], endpoints: list[dict]) -> list[str]:
    by_name = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    lines = []
    for svc in services:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        names = f"{name}.{ns}.svc.cluster.local {name}.{ns}.svc"
        ip = svc["spec"].get("clusterIP")
        if ip and ip != "None":
            lines.append(f"{ip} {names}")
            continue
        for subset in (by_name.get((ns, name)) or {}).get("subsets") or []:
            for addr in subset.get("addresses") or []:
                lines.append(f"{addr['ip']} {names}")
    return sorted(lines)


def main(server: str, ca_file: str, token_file: str, hosts_file: str) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    token = open(token_file).read().strip()
    last = None
    while True:
        try:
            text = "\n".join(
                hosts_lines(
                    fetch(server, ctx, token, "/api/v1/services"),
                    fetch(server, ctx, token, "/api/v1/endpoints"),
                )
            )
            if text != last:
                # Atomic replace: dnsmasq never reads a half-written file.
                with open(hosts_file + ".tmp", "w") as f:
                    f.write(text + "\n")
                os.replace(hosts_file + ".tmp", hosts_file)
                last = text
        except (OSError, ValueError, KeyError) as err:
            print(f"dns_shim: {err}", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main(*sys.argv[1:5])
