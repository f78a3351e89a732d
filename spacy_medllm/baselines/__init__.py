"""Classic NER baselines and small students: a training-set dictionary (`medllm_dictionary`) and a
transformers token classifier (`medllm_token_classifier`); the CNN is spaCy's own `spacy train`.
"""
