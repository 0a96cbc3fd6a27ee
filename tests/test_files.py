"""files: atomic writes keep the user's file mode and leave no temporary file behind."""

import os

from finetune.files import atomic_write


def test_atomic_write_replaces_and_keeps_the_users_file_mode(tmp_path):
    path = tmp_path / "metrics.csv"
    atomic_write(path, lambda f: f.write(b"old"))
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
