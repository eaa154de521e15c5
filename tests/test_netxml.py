"""The libvirt network XML the network classes write (xenapi/backend/netxml.py), every kind checked
against libvirt's own schema (virt-xml-validate): the kinds that run here (isolated, NAT, routed,
DHCP + TFTP) and the ones this kernel cannot run (Open vSwitch VLANs, a bridge over an 802.1q
interface), which are only checked so."""
import subprocess
import uuid

import pytest

from xenapi.backend.netxml import NetworkSpecError, network_xml

KINDS = {
    "isolated": dict(bridge="xapi7"),
    "isolated with an address": dict(bridge="xapi7", ipv4="10.9.0.1/24"),
    "nat with dhcp and pxe": dict(bridge="xapi7", mode="nat", ipv4="10.9.0.1/24", dhcp="10.9.0.10-10.9.0.99",
                                  tftp_root="/srv/tftp", boot_file="pxelinux.0"),
    "routed": dict(bridge="xapi7", mode="route", ipv4="10.9.0.1/24", mtu=9000),
    "bridged onto a host bridge (802.1q VLANs ride one too)": dict(bridge="br0", mode="bridge"),
    "open vswitch vlan": dict(bridge="ovsbr0", mode="bridge", ovs=True, vlan=42),
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_validates_against_libvirts_schema(kind, tmp_path):
    xml = network_xml(uuid=str(uuid.uuid4()), name="xapi7", **KINDS[kind])
    path = tmp_path / "net.xml"
    path.write_text(xml)
    done = subprocess.run(["virt-xml-validate", str(path), "network"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if "vlan" in KINDS[kind]:
        assert "<virtualport type=\"openvswitch\" />" in xml and "<tag id=\"42\" />" in xml
    if KINDS[kind].get("ipv4") and not KINDS[kind].get("dhcp"):
        assert "<dns enable=\"no\" />" in xml           # no dnsmasq for a network without DHCP


@pytest.mark.parametrize("spec,field", [
    (dict(mode="nat"), "ipv4"),
    (dict(ipv4="10.9.0.0/24"), "ipv4"),
    (dict(ipv4="10.9.0.1/31"), "ipv4"),
    (dict(ipv4="10.9.0.1/24", dhcp="10.9.1.10-10.9.1.20"), "dhcp"),
    (dict(ipv4="10.9.0.1/24", dhcp="10.9.0.20-10.9.0.10"), "dhcp"),
    (dict(dhcp="10.9.0.10-10.9.0.20"), "dhcp"),
    (dict(mode="bridge", vlan=5), "vlan"),
    (dict(mode="vepa"), "mode"),
])
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(NetworkSpecError) as e:
        network_xml(uuid=str(uuid.uuid4()), name="x", bridge="x", **spec)
    assert e.value.field == field
