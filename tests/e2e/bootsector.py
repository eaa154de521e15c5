"""A boot-sector guest for the KVM and storage end-to-end tests: no kernel, no OS, one hand-assembled
sector.

The firmware (SeaBIOS) loads the disk's first sector at 0000:7C00 and jumps to it in 16-bit real
mode.  The code writes ``kvm guest up`` (or the text given to ``write_image``) to COM1 (I/O port
0x3F8, the domain's serial console) and halts for good with interrupts off, so it uses no CPU once
up.  It has no ACPI handler: the power button (libvirt's clean shutdown) is ignored, and the guest
runs on.

Why not the tiny Linux guest: under this sandbox's nested ``/dev/kvm`` Linux guests with
``type='kvm'`` hang or fail an MSR assertion (see guest.py); a boot sector runs under KVM, so it
is what shows that the server drives real KVM guests here.
"""
from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from xenapi.backend import devices

READY_TEXT = "kvm guest up"
SECTOR_SIZE = 512
IMAGE_SIZE = 1024 * 1024     # the sector, then zeros (sparse): a whole-MiB disk, as firmware expects
LOAD_ADDRESS = 0x7C00        # where the BIOS puts the sector
MESSAGE_OFFSET = 0x17        # where the message starts in the sector: right after the code

# (bytes, offset, instruction): what the CPU runs, in order.  Jumps are relative to the next
# instruction; the message is addressed absolutely through DS=0, so it does not matter whether the
# BIOS jumped to 0000:7C00 or 07C0:0000.  No stack is used.
_CODE = (
    (b"\xfa",         0x00, "cli                 ; no interrupts: the hlt below is for good"),
    (b"\x31\xc0",     0x01, "xor ax, ax"),
    (b"\x8e\xd8",     0x03, "mov ds, ax          ; DS = 0: lodsb reads DS:SI"),
    (b"\xfc",         0x05, "cld                 ; lodsb counts SI up"),
    (b"\xbe\x17\x7c", 0x06, "mov si, 0x7C17      ; LOAD_ADDRESS + MESSAGE_OFFSET"),
    (b"\xba\xf8\x03", 0x09, "mov dx, 0x03F8      ; COM1's transmit register"),
    (b"\xac",         0x0C, "next: lodsb         ; AL = next message byte"),
    (b"\x84\xc0",     0x0D, "test al, al"),
    (b"\x74\x03",     0x0F, "jz done             ; NUL: the end (0x11 + 3 = 0x14)"),
    (b"\xee",         0x11, "out dx, al          ; to the UART (QEMU's takes each byte at once)"),
    (b"\xeb\xf8",     0x12, "jmp next            ; 0x14 - 8 = 0x0C"),
    (b"\xf4",         0x14, "done: hlt"),
    (b"\xeb\xfd",     0x15, "jmp done            ; 0x17 - 3 = 0x14: back to hlt if ever woken (NMI)"),
)
CODE = b"".join(code for code, _, _ in _CODE)
MESSAGE = f"{READY_TEXT}\r\n".encode() + b"\x00"   # the NUL ends the loop
SIGNATURE = b"\x55\xaa"                             # bytes 510-511: the BIOS boots only a sector ending so


MAX_TEXT = SECTOR_SIZE - len(SIGNATURE) - MESSAGE_OFFSET - 3   # room left for the text, its CR LF and NUL


def boot_sector(text: str = READY_TEXT) -> bytes:
    """The 512 bytes: code, message (``text`` and CR LF: by default ``READY_TEXT``), zero padding,
    the boot signature."""
    offset = 0
    for code, at, _ in _CODE:        # the offsets documented above are the real ones
        assert at == offset, f"{code.hex()} documented at {at:#x}, is at {offset:#x}"
        offset += len(code)
    assert offset == MESSAGE_OFFSET == int.from_bytes(CODE[7:9], "little") - LOAD_ADDRESS
    if not text.isascii() or "\0" in text or len(text) > MAX_TEXT:
        raise ValueError(f"the message must be ASCII without NUL, at most {MAX_TEXT} characters: {text!r}")
    body = CODE + f"{text}\r\n".encode() + b"\x00"
    return body + bytes(SECTOR_SIZE - len(SIGNATURE) - len(body)) + SIGNATURE


def write_image(path: str | os.PathLike, text: str = READY_TEXT) -> Path:
    """A raw disk image whose first sector is ``boot_sector(text)``; readable by QEMU whatever its user."""
    path = Path(path)
    with open(path, "wb") as f:
        f.write(boot_sector(text))
        f.truncate(IMAGE_SIZE)
    path.chmod(0o644)
    return path


def domain_xml(name: str, image: str | os.PathLike, serial_log: str | os.PathLike, *,
               virt_type: str = "kvm", memory_mib: int = 16) -> str:
    """A BIOS-booted domain over ``image`` (a virtio disk, as the server's device builder writes it
    for KVM guests), serial console to ``serial_log``, ACPI on so that a clean shutdown is asked
    of the guest (which ignores it)."""
    disk = devices.to_xml([{"kind": "disk", "path": str(image), "format": "raw"}], "virtio")
    return f"""<domain type={quoteattr(virt_type)}>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {disk}
    <serial type='file'>
      <source path={quoteattr(str(serial_log))}/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
  </devices>
</domain>
"""
