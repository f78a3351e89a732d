"""Synthetic medical texts from drug facts, in English and Estonian.

`offline` composes texts from templates with exact gold spans (no LLM); `llm` asks a generator to
write free texts that the labelling step labels; `lexicon` holds the bilingual lexicon and the
Estonian inflection; `records` reads, appends, deduplicates and splits the JSONL records.
"""
