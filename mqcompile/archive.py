"""Loading a ``.pt2`` archive without running code from it.

``torch.export.load`` unpickles two kinds of entries with ``weights_only=False`` (which runs any code the pickle
names): weights and constants that the archive's payload configs mark ``use_pickle``, and the ``sample_inputs``
(or legacy ``.pt`` weights) when their ``weights_only=True`` load fails (torch then falls back). :func:`check_archive`
reads the archive first and refuses it, naming the entry, unless every pickled entry loads with
``weights_only=True`` (plain tensors and containers: torch's restricted unpickler) and no entry is marked
``use_pickle`` or is a custom object. Then torch's own first, safe attempt succeeds and its fallback never runs.
``QuantizedProgram.save`` writes nothing else, so its files always pass.

Example:
    >>> check_archive("model.pt2")  # doctest: +SKIP  (raises ProgramFileError for a crafted archive)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import zipfile

import torch

from .errors import ProgramFileError

__all__ = ["check_archive", "load_archive"]

_PICKLED = (".pt", ".pkl", ".pth")  # torch.save files inside the archive (sample inputs, legacy weights)
_PAYLOAD_CONFIGS = ("model_weights_config.json", "model_constants_config.json")
_SAFE = "save the program again with QuantizedProgram.save from a trusted copy, or do not load this file"


def _check_payload_config(path, name: str, data: bytes) -> None:
    try:
        entries = json.loads(data).get("config", {})
    except (ValueError, AttributeError) as exc:
        raise ProgramFileError(f"{path}: entry {name} is not valid JSON ({exc}); the archive is damaged") from None
    for fqn, payload in entries.items():
        if payload.get("use_pickle"):
            raise ProgramFileError(
                f"{path}: refused to load: {fqn!r} in {name} is stored as a pickle (use_pickle), which loading would "
                f"execute; mqcompile writes tensors only. {_SAFE}"
            )
        if name.endswith("constants_config.json") and not str(payload.get("path_name", "")).startswith("tensor_"):
            raise ProgramFileError(
                f"{path}: refused to load: constant {fqn!r} in {name} is a custom object "
                f"({payload.get('path_name')!r}), which loading would run code for. {_SAFE}"
            )


def _check_pickle(path, name: str, data: bytes) -> None:
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # anything but plain tensors and containers: torch would retry with weights_only=False
        raise ProgramFileError(
            f"{path}: refused to load: entry {name} holds more than tensors ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); loading it would run code from the file. {_SAFE}"
        ) from None


def check_archive(path: str | os.PathLike) -> None:
    """Raise ProgramFileError unless loading ``path`` with ``torch.export.load`` unpickles nothing but tensors."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ProgramFileError(f"{path}: not a .pt2 archive ({exc})") from None
    with archive:
        for info in archive.infolist():
            name = info.filename
            if name.rsplit("/", 1)[-1] in _PAYLOAD_CONFIGS:
                _check_payload_config(path, name, archive.read(name))
            elif name.endswith(_PICKLED):
                _check_pickle(path, name, archive.read(name))


class _Collect(logging.Handler):
    def __init__(self, records: list):
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _torch_export_log():
    """Hold what ``torch.export`` logs during a load; what is left in the list on the way out is passed on to
    torch's own handlers as it would have been."""
    logger = logging.getLogger("torch.export")  # torch gives it a stderr handler of its own
    records: list[logging.LogRecord] = []
    handlers, propagate = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [_Collect(records)], False
    try:
        yield records
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        for record in records:
            logger.handle(record)


def load_archive(path: str | os.PathLike, extra_files: dict[str, str] | None = None, what: str = "torch.export.save"):
    """``torch.export.load`` after :func:`check_archive`, with ProgramFileError for a missing, foreign or damaged
    file (the cause in the message, not in a traceback torch logs at WARNING); ``what`` names the writer the
    file should come from."""
    if not os.path.isfile(path):
        raise ProgramFileError(f"{path}: no such file; pass the path given to {what}")
    if not zipfile.is_zipfile(path):
        raise ProgramFileError(f"{path}: not a .pt2 archive (written by {what})")
    check_archive(path)
    with _torch_export_log() as records:
        try:
            return torch.export.load(path, extra_files=extra_files)
        except Exception as exc:
            # torch logs the cause as a traceback at WARNING and raises "check the warnings above": say the cause
            causes = [r.exc_info[1] for r in records if r.exc_info and r.exc_info[1] is not None]
            cause = causes[-1] if causes else exc
            records.clear()
            raise ProgramFileError(
                f"{path}: not a loadable torch.export archive, the file is damaged or not from {what} "
                f"({type(cause).__name__}: {cause})"
            ) from exc
