"""lxc_roots: a container's own root directory, made on create and removed on destroy only while empty."""
from __future__ import annotations

import pytest

from xenapi.services import lxc_roots
from xenapi.errors import XenAPIError

UUID = "0f6c2b1e-5d4a-4c1b-9d3e-2a7b8c9d0e1f"


def test_a_container_without_a_root_gets_an_empty_directory_of_its_own(tmp_path):
    platform = lxc_roots.own_root(str(tmp_path), UUID, {"init": "/bin/sh"})
    root = tmp_path / "lxc" / UUID / "rootfs"
    assert platform == {"init": "/bin/sh", "lxc-root": str(root)}
    assert root.is_dir() and list(root.iterdir()) == []


def test_a_root_the_caller_names_is_kept_and_nothing_is_made(tmp_path):
    platform = {"lxc-root": "/srv/containers/web1"}
    assert lxc_roots.own_root(str(tmp_path), UUID, platform) is platform
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("root", ["/", "///", "srv/web1"])
def test_the_host_root_or_a_relative_path_is_refused(tmp_path, root):
    with pytest.raises(XenAPIError) as caught:
        lxc_roots.own_root(str(tmp_path), UUID, {"lxc-root": root})
    assert caught.value.code == "VALUE_NOT_SUPPORTED" and caught.value.params[:2] == ("platform:lxc-root", root)


def test_without_a_state_directory_the_caller_must_name_the_root():
    with pytest.raises(XenAPIError) as caught:
        lxc_roots.own_root(":memory:", UUID, {})
    assert caught.value.code == "VALUE_NOT_SUPPORTED" and "set platform:lxc-root" in caught.value.params[2]


def test_destroy_removes_the_default_root_while_empty_and_keeps_a_filled_one(tmp_path):
    platform = lxc_roots.own_root(str(tmp_path), UUID, {})
    lxc_roots.release_root(str(tmp_path), UUID, platform)
    assert not (tmp_path / "lxc" / UUID).exists()

    platform = lxc_roots.own_root(str(tmp_path), UUID, {})
    (tmp_path / "lxc" / UUID / "rootfs" / "etc").mkdir()
    lxc_roots.release_root(str(tmp_path), UUID, platform)
    assert (tmp_path / "lxc" / UUID / "rootfs" / "etc").is_dir()


def test_destroy_never_touches_a_root_the_caller_named(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    lxc_roots.release_root(str(tmp_path), UUID, {"lxc-root": str(mine)})
    assert mine.is_dir()
