"""End to end: a real LXC container through the Xen-API, on libvirt's LXC driver.

The container's root is the directory the server gives a container created without
``platform:lxc-root`` (``<state>/lxc/<uuid>/rootfs``); the test fills it with a static busybox
(the tiny guest's package) and runs ``busybox sh -c '...'`` as init, which leaves a file in its
root, so the test sees the container really ran in that directory and not in the host's ``/``.
The daemon is a private one (tests/e2e/lxc_libvirtd.py says why ``lxc:///system`` cannot start
containers on this machine); ``XENAPI_E2E_LXC_URI`` points the test at another LXC libvirt.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import XenAPI

import guest
import lxc_libvirtd
from qemu_e2e import MiB
from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.e2e
INIT_ARGS = "sh -c 'echo \"up in $(pwd)\" > /ready; exec busybox sleep 1000'"


@pytest.fixture(scope="module")
def lxc_uri():
    if os.environ.get("XENAPI_E2E_LXC_URI"):
        yield os.environ["XENAPI_E2E_LXC_URI"]
        return
    why = lxc_libvirtd.missing()
    if why:
        pytest.fail(f"cannot run an LXC libvirtd here: {why}", pytrace=False)
    daemon = lxc_libvirtd.LxcLibvirtd()
    try:
        daemon.start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield daemon.uri
    daemon.stop()


@pytest.fixture(scope="module")
def busybox() -> bytes:
    try:
        _, deb = guest.download_debs()
        return guest.busybox_binary(deb)
    except (guest.GuestBuildError, OSError) as e:
        pytest.fail(f"no static busybox for the container: {e}", pytrace=False)


def container_record(label: str) -> dict:
    return {
        "name_label": label, "name_description": "", "user_version": "1", "is_a_template": False,
        "affinity": "OpaqueRef:NULL", "memory_static_max": str(128 * MiB), "memory_dynamic_max": str(128 * MiB),
        "memory_dynamic_min": str(128 * MiB), "memory_static_min": str(128 * MiB), "VCPUs_params": {},
        "VCPUs_max": "1", "VCPUs_at_startup": "1", "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart", "actions_after_crash": "destroy", "PV_bootloader": "", "PV_kernel": "",
        "PV_ramdisk": "", "PV_args": INIT_ARGS, "PV_bootloader_args": "", "PV_legacy_args": "",
        "HVM_boot_policy": "", "HVM_boot_params": {}, "platform": {"init": "/bin/busybox"}, "PCI_bus": "",
        "other_config": {}, "recommendations": "",
    }


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.1)
    return value


def test_a_container_runs_in_its_own_root_through_the_api(lxc_uri, busybox, tmp_path):
    running = start_server(tmp_path, uris=[lxc_uri])
    session = running.session()
    x = session.xenapi
    try:
        vm = x.VM.create(container_record("lxc e2e"))
        uuid = x.VM.get_uuid(vm)
        root = Path(x.VM.get_platform(vm)["lxc-root"])
        assert root == tmp_path / "state" / "lxc" / uuid / "rootfs" and root.is_dir() and not any(root.iterdir())

        (root / "bin").mkdir()
        (root / "bin" / "busybox").write_bytes(busybox)
        (root / "bin" / "busybox").chmod(0o755)
        x.VM.start(vm, False, False)
        assert x.VM.get_power_state(vm) == "Running"
        assert wait_for(lambda: (root / "ready").exists() and (root / "ready").read_text(),
                        "the container's init writing /ready") == "up in /\n"
        assert not Path("/ready").exists()           # it wrote into its own root, not the host's

        x.VM.hard_shutdown(vm)
        assert x.VM.get_power_state(vm) == "Halted"
        x.VM.destroy(vm)
        with pytest.raises(XenAPI.Failure) as gone:
            x.VM.get_record(vm)
        assert gone.value.details[0] == "HANDLE_INVALID"
        assert (root / "bin" / "busybox").exists()   # a filled root stays: the server never deletes a tree

        empty = x.VM.create(container_record("never filled"))
        empty_root = Path(x.VM.get_platform(empty)["lxc-root"])
        assert empty_root.is_dir()
        x.VM.destroy(empty)
        assert not empty_root.parent.exists()        # an untouched default root goes with its VM
    finally:
        session.xenapi.session.logout()
        stop_server(running)


def test_an_lxc_template_unpacks_its_tarball_into_each_containers_own_root(lxc_uri, busybox, tmp_path):
    """An ``lxc:`` template: VM.clone gives the container an empty root of its own, VM.provision
    unpacks the template's root-filesystem tarball into it, and the container runs from it."""
    import tarfile
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "busybox").write_bytes(busybox)
    (tree / "bin" / "busybox").chmod(0o755)
    tarball = tmp_path / "busybox-root.tar"
    with tarfile.open(tarball, "w") as archive:
        archive.add(tree / "bin", arcname="bin")
    running = start_server(tmp_path, uris=[lxc_uri])
    session = running.session()
    x = session.xenapi
    try:
        template = x.VM.create({**container_record("busybox"), "is_a_template": True,
                                "other_config": {"template": "lxc:busybox", "lxc_tarball": str(tarball)}})
        template_root = Path(x.VM.get_platform(template)["lxc-root"])
        vm = x.VM.clone(template, "from lxc:busybox")
        root = Path(x.VM.get_platform(vm)["lxc-root"])
        assert root != template_root and root.is_dir() and not any(root.iterdir())
        x.VM.provision(vm)
        assert not x.VM.get_is_a_template(vm)
        assert (root / "bin" / "busybox").read_bytes() == busybox and os.access(root / "bin" / "busybox", os.X_OK)
        assert not any(template_root.iterdir())      # the template's own root is untouched
        x.VM.start(vm, False, False)
        assert wait_for(lambda: (root / "ready").exists() and (root / "ready").read_text(),
                        "the container's init writing /ready") == "up in /\n"
        x.VM.hard_shutdown(vm)

        bad = x.VM.clone(template, "missing tarball")
        x.VM.remove_from_other_config(bad, "lxc_tarball")
        x.VM.add_to_other_config(bad, "lxc_tarball", str(tmp_path / "nope.tar"))
        with pytest.raises(XenAPI.Failure) as refused:
            x.VM.provision(bad)
        assert refused.value.details[:2] == ["VALUE_NOT_SUPPORTED", "other_config:lxc_tarball"]
        for ref in (vm, bad, template):
            x.VM.destroy(ref)
    finally:
        session.xenapi.session.logout()
        stop_server(running)
