"""host_cpu: one per logical CPU of a host, from libvirt's node info and capabilities.

libvirt describes the host's CPU once, so every host_cpu of a host carries the same facts; only
utilisation (the metrics sampler) differs.  Sources and units: docs/host-facts.md.
"""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import POOL_OP

_DOCS = {
    "number": "The logical CPU's number (0 .. cpu_count-1)",
    "vendor": "CPUID vendor string (GenuineIntel, AuthenticAMD), as host.cpu_info vendor",
    "speed": "MHz (libvirt's node info)",
    "modelname": "Brand string (/proc/cpuinfo on this machine, else SMBIOS, else libvirt's CPU model)",
    "family": "CPU family (capabilities' signature, else /proc/cpuinfo on this machine); -1 unknown",
    "model": "CPU model number (same sources as family); -1 unknown",
    "stepping": "Stepping (same sources as family); empty when unknown",
    "flags": "Every CPU feature, libvirt's names, space separated (baselineCPU with EXPAND_FEATURES)",
    "features": "Empty, as in xapi (its CPUID feature words have no libvirt source)",
    "utilisation": "Busy share 0..1 over the last metrics interval (libvirt's getCPUStats)",
}

host_cpu = declare_class(
    "host_cpu", "A physical CPU.",
    fields("""uuid:s host:@host number:i vendor:s speed:i modelname:s family:i model:i stepping:s flags:s
              features:s utilisation:f other_config*:s2s""", ENUMS, docs=_DOCS),
    writer_roles=POOL_OP,
)
