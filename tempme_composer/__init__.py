"""tempme-composer: CLIP text-video retrieval with TempMe and STOP, as a Composer recipe."""

__version__ = "0.1.0"


def load_exported(*args, **kwargs):  # noqa: ANN002, ANN003 - re-exported lazily: keeps `import tempme_composer` light
    """See `tempme_composer.inference.exported.load_exported`."""
    from tempme_composer.inference.exported import load_exported as _load

    return _load(*args, **kwargs)
