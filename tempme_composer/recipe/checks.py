"""What this machine and the config must agree on before anything is built (one clear error each)."""

from __future__ import annotations

from pathlib import Path

from tempme_composer.config import TrainConfig
from tempme_composer.errors import ConfigError
from tempme_composer.remote import is_remote

__all__ = ['check_machine']


def check_machine(cfg: TrainConfig, device: str) -> None:
    """AMP and FSDP need a GPU in Composer 0.32; ``resume=`` must name a file that exists (or a remote one)."""
    if device == 'cpu' and cfg.precision != 'fp32':  # Composer rejects AMP on CPU (docs/reference/composer.md#precision)
        raise ConfigError(f'precision={cfg.precision} needs a GPU; this machine has none, use precision=fp32')
    if cfg.resume and not is_remote(cfg.resume) and not Path(cfg.resume).is_file():
        raise ConfigError(f'resume={cfg.resume}: no such checkpoint file')
    if cfg.fsdp is not None and device == 'cpu':  # Composer's FSDP calls torch.cuda.current_device()
        raise ConfigError(
            'fsdp is set but this machine has no GPU: Composer 0.32 FSDP needs CUDA devices. '
            'Remove the fsdp section (fsdp=null) to train with DDP on CPU'
        )
