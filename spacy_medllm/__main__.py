"""`python -m spacy_medllm ...`: the typer command line."""

from .cli import main

main()
