"""`python -m spacy_medllm ...`: the typer command line."""

from spacy_medllm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
