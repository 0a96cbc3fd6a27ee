"""One cache folder with a sub-folder per kind; the old variable still works, saying so once."""

from pathlib import Path

import pytest

from finetune import cache


def test_the_root_is_finetune_cache_dir_with_one_folder_per_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "c"))
    assert {kind: cache.cache_dir(kind) for kind in cache.KINDS} == {
        "features": tmp_path / "c" / "features", "files": tmp_path / "c" / "files", "hf": tmp_path / "c" / "hf",
        "logs": tmp_path / "c" / "logs", "shards": tmp_path / "c" / "shards"}
    with pytest.raises(ValueError, match="unknown cache kind"):
        cache.cache_dir("models")


def test_default_is_the_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("FINETUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "finetune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == Path.home() / ".cache" / "finetune"


def test_the_deprecated_variable_still_sets_the_root_with_one_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FINETUNE_CACHE_DIR")
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "old"))
    monkeypatch.setattr(cache, "_said", set())
    assert cache.cache_dir("files") == tmp_path / "old" / "files"
    assert cache.cache_dir("features") == tmp_path / "old" / "features"
    assert capsys.readouterr().err.count("$FINETUNE_CACHE is deprecated") == 1
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "new"))  # the new one wins
    assert cache.cache_root() == tmp_path / "new"


def test_features_and_file_checks_both_live_under_the_one_root(image_folder, tiny_tree, tmp_path, monkeypatch):
    from finetune.data.filecheck import check_files
    from finetune.train.features.store import store_root

    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "one"))
    assert store_root(None, image_folder) == tmp_path / "one" / "features"
    check_files(sorted(image_folder.rglob("*.png")))
    assert (tmp_path / "one" / "files" / "filecheck.sqlite").is_file()
