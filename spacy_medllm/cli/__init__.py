"""The one command line, `spacy-medllm` or `python -m spacy_medllm` (typer): every step.

Each command is a thin layer over the package's functions; `--help` on any command lists its
options with their defaults. Ordinary mistakes (a missing file, a bad value) end with one line
saying what is wrong and exit code 1; `--verbose` shows the traceback. The modules below add
their commands to `app` when imported, in the order of the workflow.
"""

# isort: skip_file
from spacy_medllm.cli._app import app, main
from spacy_medllm.cli import data  # noqa: F401  scrape, synth, label, annotator-report
from spacy_medllm.cli import corpora  # noqa: F401  corpus list|stats|convert
from spacy_medllm.cli import finetune  # noqa: F401  finetune
from spacy_medllm.cli import pipeline  # noqa: F401  assemble, extract, info
from spacy_medllm.cli import serving  # noqa: F401  export-gguf, serve
from spacy_medllm.cli import batch  # noqa: F401  batch
from spacy_medllm.cli import evaluate  # noqa: F401  evaluate, calibrate, combine, report
from spacy_medllm.cli import baselines  # noqa: F401  baseline build-dictionary|train-transformer
from spacy_medllm.cli import distil  # noqa: F401  distil label|select|train-transformer|report
from spacy_medllm.cli import profile  # noqa: F401  profile NAME -- COMMAND
from spacy_medllm.cli import clinical  # noqa: F401  index, search, summarize

__all__ = ["app", "main"]
