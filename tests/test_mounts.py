from pathlib import Path

from daemon.library.mounts import filesystem_type, is_network_filesystem

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
