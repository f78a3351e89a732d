"""The path of one document without a model: labels, prompts, parsing, alignment, chunking, records.

text -> prompt (`prompts`) -> [a generator] -> response -> parse (`parsing`, `json_reader`) ->
align (`alignment`) -> spans, with every rejection recorded (`records`). Also the gold `Example`
type that training and evaluation share (`examples`), long documents cut into pieces
(`chunking`), per-entity confidence (`confidence`) and the prompt settings saved beside an
adapter (`adapter_settings`). Imports only spaCy and the standard library.
"""
