"""Public medical corpora as gold examples: readers, where they are, deterministic splits with leak
checks, the registry (`load_corpus`), and Docs, DocBins and JSONL for training.
"""
