"""Where the corpora are read from: a given path, else $MEDLLM_CORPORA, else ../shared/corpora."""

from __future__ import annotations

import os
from pathlib import Path

CORPORA_ENV = "MEDLLM_CORPORA"

REPO_ROOT = Path(__file__).resolve().parents[2]


class CorpusNotFoundError(FileNotFoundError):
    """A corpus's files are not where they were looked for."""


def corpora_root(path: str | Path | None = None) -> Path:
    """The folder holding the corpora: `path`, else $MEDLLM_CORPORA, else ../shared/corpora."""
    if path is not None:
        return Path(path)
    if os.environ.get(CORPORA_ENV):
        return Path(os.environ[CORPORA_ENV]).expanduser()
    return REPO_ROOT.parent / "shared" / "corpora"


def need_path(path: Path, corpus: str) -> Path:
    if not path.exists():
        raise CorpusNotFoundError(
            f"{corpus}: {path} does not exist; pass path=... (or set ${CORPORA_ENV} to the folder "
            "that holds the corpora)"
        )
    return path
