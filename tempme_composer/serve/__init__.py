"""``tempme-serve``: the search of ``tempme-search`` as an HTTP service (FastAPI + uvicorn), the model and the index
loaded once, concurrent text queries micro-batched, new index generations picked up without a restart.

The index it serves is the one ``docs/using-models.md`` describes. No Composer import: this package sits on `tempme_composer.inference`.
"""
