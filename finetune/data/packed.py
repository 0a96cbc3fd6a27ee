"""Images that are not files of their own: an image in a tar shard (data.shard_reader.ShardMember), a row of a
Hugging Face dataset (data.hf.HFImage). Each stands where a file's path does in a sample (path, label): loading
reads its bytes and decodes them as a file's (data.images.load_rgb), cache keys stamp it, and its text form
(SHARD.tar#MEMBER, hf:SOURCE:SPLIT#ROW) is what predictions and reports record and data.images.sample_at reads back."""

from __future__ import annotations

from pathlib import Path


class PackedImage:
    """The image's bytes, what identifies them for a cache key, and the folder they are read from."""

    def read_bytes(self) -> bytes:
        raise NotImplementedError

    def stamp(self) -> tuple[str, int, int]:
        """(identity, size, version) for cache keys: changes whenever the bytes may have."""
        raise NotImplementedError

    @property
    def folder(self) -> Path | None:
        """The folder the image is read from, which nothing may be written into (None: not a local one)."""
        raise NotImplementedError

