"""Progress messages of long runs: the `spacy_medllm` logger when it is set up, else stderr."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("spacy_medllm")


def say(message: str, enabled: bool = True) -> None:
    """Show `message` (a line of progress) unless `enabled` is False."""
    if not enabled:
        return
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    else:
        print(f"[spacy-medllm] {message}", file=sys.stderr, flush=True)
