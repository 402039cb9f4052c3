"""tempme-composer: CLIP text-video retrieval with TempMe and STOP, as a Composer recipe."""

__version__ = "0.1.0"
