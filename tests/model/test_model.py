"""UnifiedModel meanP baseline: masked mean pooling of normalised frame embeddings, EOT text embedding."""

import pytest
import torch
import torch.nn.functional as F

from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.model import UnifiedModel


@pytest.fixture(scope='module')
def model() -> UnifiedModel:
    torch.manual_seed(0)
    return UnifiedModel(CLIP(CLIP_PRESETS['tiny'])).eval()


def test_video_embedding_is_the_mean_of_its_valid_frames(model):
    R = model.clip.config.image_resolution
    frames = torch.randn(5, 3, R, R)
    video = torch.zeros(1, 12, 3, R, R)
    video[0, :5] = frames
    mask = torch.tensor([[1] * 5 + [0] * 7])
    with torch.no_grad():
        pooled = model.encode_video(video, mask)
        per_frame = F.normalize(model.clip.encode_image(frames), dim=-1)
    torch.testing.assert_close(pooled[0], F.normalize(per_frame.mean(0), dim=-1))
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(1))


def test_padding_content_never_leaks_into_the_video_embedding(model):
    R = model.clip.config.image_resolution
    video = torch.randn(2, 4, 3, R, R)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    noisy = video.clone()
    noisy[0, 2:] = torch.randn(2, 3, R, R) * 10
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(video, mask), model.encode_video(noisy, mask))


def test_video_without_frames_is_an_error_not_a_zero_vector(model):
    R = model.clip.config.image_resolution
    with pytest.raises(ValueError, match=r'batch positions \[1\]'):
        model.encode_video(torch.zeros(2, 3, 3, R, R), torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_text_embedding_is_unit_norm_and_batch_independent(model):
    ids = torch.zeros(3, 8, dtype=torch.long)
    ids[:, 0] = 49406
    ids[:, 1] = torch.tensor([320, 1611, 2533])
    ids[:, 2] = 49407
    with torch.no_grad():
        together = model.encode_text(ids)
        alone = torch.cat([model.encode_text(ids[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(3))
