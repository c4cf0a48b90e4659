"""Loading Hugging Face checkpoints without transformers' own progress bars.

``from_pretrained`` draws a "Loading weights" bar per checkpoint, which lands inside the demo's and the suite's own
progress and, piped to a file, leaves carriage returns in the log. The bar is turned off only while we load, and
turned back on after if it was on: a user's own loads keep theirs.

Example:
    >>> with quiet_loading():  # doctest: +SKIP
    ...     model = AutoModel.from_pretrained(path)
"""

from __future__ import annotations

import contextlib

__all__ = ["quiet_loading"]


@contextlib.contextmanager
def quiet_loading():
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
