"""The spaCy side: the `medllm_ner` component, where its spans go on the Doc (`spans`), its scorer,
the response cache, pipeline assembly from an adapter, and the spacy-llm registrations.
"""
