"""Clinical context, search and summaries over the entities of processed Docs.

`context`: medspaCy's ConText after `medllm_ner` (`add_context`, the `medllm_context` factory);
`assertion`: `medllm_assertion`, the status the model itself wrote for each entity; `entities`:
statuses, medspaCy's attributes and normalised entity records; `search`: an SQLite FTS5 index of
Docs and its query language; `summary`: structured and free-text summaries checked against the
entities. Importing this package registers `medllm_context` and `medllm_assertion` (medspaCy is
imported only when ConText is built).
"""

from spacy_medllm.clinical import assertion, context  # noqa: F401  (register the factories)
from spacy_medllm.clinical.context import add_context
from spacy_medllm.clinical.entities import STATUSES, set_status, status_of

__all__ = ["STATUSES", "add_context", "set_status", "status_of"]
