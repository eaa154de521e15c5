"""What the network classes (network, PIF, VIF, VLAN, tunnel, Bond, security_group) share: how a
message reaches the network service (xenapi/services/networks.py)."""


def networking(method: str):
    """A message body that hands its arguments to the network service's ``method``."""
    return lambda ctx, *args: getattr(ctx.services.networks, method)(ctx, *args)
