"""ufw_address_in_networks: whether an address lies in any of UFW's source networks."""

from __future__ import annotations

import ipaddress


def ufw_address_in_networks(address: str, networks: list[str]) -> bool:
    """True when ``address`` is inside one of ``networks`` (addresses or CIDRs, IPv4 or IPv6;
    "any" matches everything). An address that is not an IP matches nothing."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    for network in networks:
        if str(network).strip().lower() == "any":
            return True
        try:
            if ip in ipaddress.ip_network(str(network).strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


class FilterModule:
    def filters(self) -> dict:
        return {"ufw_address_in_networks": ufw_address_in_networks}
