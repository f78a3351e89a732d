"""Evaluation: one set of metrics (`metrics`), the seed's set metric (`seed_metric`), BERTScore,
scoring any spaCy pipeline on a corpus (`evaluate`), tables, plots and the run's report page.
"""
