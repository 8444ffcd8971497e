from pathlib import Path

from daemon.core.filesystems import filesystem_type, is_network_filesystem
from daemon.library.mounts import ROOT_EMPTY, ROOT_MISSING, has_entries, mount_loss

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
//nas/music /srv/music cifs rw,vers=3.0 0 0
nas:/export /srv/music/archive nfs4 rw 0 0
/dev/sdb1 /srv/music\\040local ext4 rw 0 0
"""


def test_longest_mount_point_wins():
    assert filesystem_type(Path("/srv/music/Rock/a.mp3"), MOUNTS) == "cifs"
    assert filesystem_type(Path("/srv/music/archive/x.flac"), MOUNTS) == "nfs4"
    assert filesystem_type(Path("/srv/musicbox"), MOUNTS) == "ext4"


def test_escaped_spaces_and_network_detection():
    assert filesystem_type(Path("/srv/music local/a.mp3"), MOUNTS) == "ext4"
    assert is_network_filesystem(Path("/srv/music"), MOUNTS)
    assert not is_network_filesystem(Path("/home"), MOUNTS)


def test_one_mount_loss_guard_for_walks_and_settled_deletions(tmp_path):
    """The walk and the watcher's settled deletions ask the same question: missing root,
    empty root while tracks are known, or more than the share gone at once."""
    root = tmp_path / "music"
    walk = {"empty": False, "at_once": "vanished in one walk"}
    assert mount_loss(str(root), 0, 10, 0.2, **walk) == ROOT_MISSING
    root.mkdir()
    assert not has_entries(str(root)) and not has_entries(str(tmp_path / "gone"))
    assert mount_loss(str(root), 10, 10, 0.2, empty=True, at_once="") == ROOT_EMPTY
    assert mount_loss(str(root), 0, 0, 0.2, empty=True, at_once="") is None  # nothing known
    assert mount_loss(str(root), 2, 10, 0.2, **walk) is None  # a fifth is allowed
    assert mount_loss(str(root), 3, 10, 0.2, **walk) == (
        "more than 20% of the known files vanished in one walk")
    (root / "Rock").mkdir()
    assert has_entries(str(root))
