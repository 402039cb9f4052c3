"""Using a trained model: export (safetensors + JSON), index a folder of videos, search it by text.

Nothing in this package imports Composer (and streaming only to read an MDS split), so it keeps working when
Composer's torch pin has to go.
"""

from tempme_composer.inference.exported import ExportedModel, ExportError, load_exported

__all__ = ['ExportedModel', 'ExportError', 'load_exported']
