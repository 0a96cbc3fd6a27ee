"""Files we write and files we read: atomic writes that survive a crash, and loads that run no code and
are bounded (YAML without expansion bombs or duplicate keys, torch files without inflation bombs).

A leaf: it imports nothing from the package but `errors` (and nothing heavy at import), so every layer can use it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import CheckpointError, ConfigError, ResourceError

YAML_MAX_BYTES = 1 << 20  # a recipe is a page of text; 1 MiB is far beyond any real one
YAML_MAX_VALUES = 10_000  # values after expanding YAML aliases: a "billion laughs" document is refused here


def atomic_write(path: Path, write) -> None:
    """write(file) into a temp file in the same folder, fsync, rename over `path`, fsync the folder.

    A crash at any instant leaves either the old file or the new one, never a torn one; fsyncing the
    folder makes the rename itself survive a power cut (rename alone is atomic but not durable)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files get the user's usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(exc, path.parent):
            raise ResourceError(f"the disk is full: could not write {path} (the previous {path.name}, if any, is "
                                "intact). Free some space and run again (train: --resume continues from last.pt)"
                                ) from None
        raise
    _fsync_dir(path.parent)


FULL_DISK = 1 << 20  # bytes free: less than this after a failed write, and the disk was full


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """No space left (or a quota reached): an OSError says so; torch.save's zip writer only says "unexpected pos
    576 vs 534" or "file write failed", so there the disk itself is asked, once the temporary file is gone."""
    import errno
    import shutil

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_DISK
    except OSError:
        return False


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_torch_load(path: Path, what: str = "file"):
    """torch.load that only rebuilds tensors and plain data: a pickle that would import or call anything
    (os.system, a class's __reduce__, ...) is refused before any of it runs; a zip whose entries would inflate
    far beyond the file, or whose bytes fail their CRC, is refused before any of it is loaded."""
    import pickle
    import warnings

    import torch

    check_torch_zip(path, what)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; we refuse or load anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1] if lines else "")
        raise CheckpointError(f"refusing to load {path}: this {what} holds Python objects that would run code when "
                              f"unpickled ({detail[:160]}); finetune only loads tensors and plain data. If you trust "
                              "its source, re-save just the state dict, or use .safetensors") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {path}: the {what} is corrupt or truncated ({first[:160]})") from None


def check_torch_zip(path: Path, what: str = "file") -> None:
    """A torch file is a zip of stored (uncompressed) entries, each with a CRC-32. Refuse one whose entries inflate
    to much more than the file holds (a zip bomb: 2 MB on disk, 2 GiB in memory) and one whose bytes are damaged
    (torch itself does not check the CRCs). Not a zip: left to torch.load, which reads the legacy format."""
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return
    with archive:
        inflated = sum(info.file_size for info in archive.infolist())
        size = os.path.getsize(path)
        if inflated > 2 * size + (64 << 20):
            raise CheckpointError(f"refusing to load {path}: its {size / 2**20:.1f} MiB would inflate to "
                                  f"{inflated / 2**30:.1f} GiB; torch never writes compressed entries, so this "
                                  f"{what} was not written by torch.save") from None
        try:
            damaged = archive.testzip()  # reads every entry and compares its CRC-32
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            damaged = f"{exc}"
        if damaged:
            raise CheckpointError(f"cannot read {path}: the {what} is damaged ({damaged} fails its CRC check); "
                                  "use another copy, or last.pt / best.pt of the run")


def read_yaml_file(path: Path, what: str = "recipe"):
    """A YAML file as plain data, read with the safe loader (python tags are refused, never run) and bounded:
    at most YAML_MAX_BYTES of UTF-8 text, YAML_MAX_VALUES values once aliases are expanded, no duplicate keys."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > YAML_MAX_BYTES:
        raise ConfigError(f"{what} {path} is {len(raw) / 2**20:.1f} MiB; a {what} is a short text file "
                          f"(at most {YAML_MAX_BYTES >> 20} MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save it as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node(node, {}, what, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        tag = getattr(exc, "problem", "") or ""
        if "tag:yaml.org,2002:python/" in tag:  # safe_load refused it; say why in words a user can act on
            name = tag.split("tag:yaml.org,2002:", 1)[1].rstrip("'")
            line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else "?"
            raise ConfigError(f"cannot read {what} {path}: line {line} has the tag !!{name}, which would run Python "
                              f"code; a {what} is plain data (sections, names, numbers, paths), so remove the tag"
                              ) from None
        raise ConfigError(f"cannot read {what} {path}: {exc}".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"cannot read {what} {path}: it is nested too deeply") from None
    finally:
        loader.dispose()


def _check_node(node, sizes: dict, what: str, path: Path) -> int:
    """How many values `node` expands to (aliases counted each time they are used); refuses duplicate keys."""
    import yaml

    if id(node) in sizes:
        return sizes[id(node)]
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_check_node(child, sizes, what, path) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ConfigError(f"{what} {path} has the key {key.value!r} twice (lines {seen[key.value]} and "
                                      f"{key.start_mark.line + 1}); keep one")
                seen[key.value] = key.start_mark.line + 1
            size += _check_node(key, sizes, what, path) + _check_node(value, sizes, what, path)
    if size > YAML_MAX_VALUES:
        raise ConfigError(f"{what} {path} expands to more than {YAML_MAX_VALUES:,} values (YAML aliases that repeat "
                          f"other aliases?); a {what} is a few dozen settings, write them out")
    sizes[id(node)] = size
    return size


def refuse_inside(path: Path, root: Path | list[Path] | None, what: str, error=ConfigError) -> None:
    """Refuse to write `path` when it is `root` (or one of a list of dataset folders) or inside it: finetune never
    writes into a dataset."""
    out = Path(path).expanduser().absolute().resolve()
    for folder in [root] if isinstance(root, (str, Path)) else root or []:
        data = Path(folder).expanduser().absolute().resolve()
        if out == data or data in out.parents:
            raise error(f"{what} {path} is inside the dataset {folder}; finetune never writes into a dataset: choose "
                        "a folder outside it")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files atomic_write leaves when a process is killed mid-write (.NAME.XXXX.tmp).
    Only for a folder this process owns (a run folder under its lock)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine): whose lock or temporary files are still in use."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return _proc_stat(pid, 0) != "Z"  # a killed process not yet reaped (a zombie) is gone all the same


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None where /proc cannot tell: with the pid it names
    one process, so a pid reused by another process (after a reboot) is not taken for it."""
    return _proc_stat(pid, 19)


def _proc_stat(pid: int, field: int) -> str | None:
    """Field `field` after the command name of /proc/PID/stat (0: state, 19: start time), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None


def make_folder(path: Path, what: str, error=ConfigError) -> Path:
    """mkdir -p that fails with one line saying what to do (a read-only place, a file in the way)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # writable: fail now, not after the work
            pass
    except OSError as exc:
        blocking = next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocking} is a file, not a folder" if blocking is not None else exc.strerror or exc
        raise error(f"cannot write {what} {path}: {why}; choose another --output") from None
    return Path(path)


def unreadable_file(path: Path, what: str) -> str | None:
    """Why `path` cannot be read as a `what`, in words, or None when it is a regular file."""
    path = Path(path)
    if path.is_file():
        return None
    if not path.exists():
        return f"{what} not found: {path}"
    kind = "a folder" if path.is_dir() else "a device, a pipe or a socket"
    return f"{what} {path} is {kind}, not a file"


def is_checkpoint_file(path: Path) -> bool:
    """Whether `path` is a finetune checkpoint (a torch zip whose pickle names our format), read without loading it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            pickle = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            return pickle is not None and b"finetune/" in archive.read(pickle)
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks (a weights file can be hundreds of MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
