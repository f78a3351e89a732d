"""Data generation: drug pages to facts (`scrape`), synthetic texts (`synth`), LLM and dictionary
labels of them (`labelling`).
"""
