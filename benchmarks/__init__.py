"""Benchmarks and experiments: speed, memory, decoding, confidence, the seed e-mail benchmark.

Outside the library on purpose: they use the package the way a user would and write results
files (JSON, Markdown, PNG) under training/reports. Run from the repository root, e.g.
`python -m benchmarks.speed --help`.
"""
