"""ImageNet weights for the student's backbone: fetched from a URL, loaded as MMAction2 means, verified.

The seed's students start from ImageNet: MMAction2's configs name the weights by URL
(``mmcls://mobilenet_v2``, ``torchvision://resnet50``, https://download.pytorch.org/...)
and its backbones load them in their own way: TSM backbones inflate 2D weights into
the shifted network (``pretrained2d=True``: ``.net`` wrappers, ConvModule names), the
plain ResNet maps torchvision names.  Runs here are offline, so ``video_kd.config``
drops those URLs; this module puts the weights back from a file the pipeline fetched
like the teacher (https:// or s3://, sha256-checked, cached by checksum in S3):

    path = fetch_pretrained(url, work_dir, sha256, cache=layout)
    report = apply_pretrained(cfg, path)   # before the Runner builds the model

``apply_pretrained`` points the student's backbone at the file, with MMAction2's own
loading path switched on, and checks it: the backbone is built once with every
floating-point tensor set to NaN, MMAction2's ``init_weights`` loads the file, and any
tensor still NaN was not loaded.  MMAction2 itself would only log that (ResNet) or load
a subset without a word (``pretrained2d=False``); here it is one error naming them.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config, ConfigDict

from video_kd import download
from video_kd.config import student_model_cfg
from video_kd.convert import save_checkpoint
from video_kd.errors import UserError, one_line
from video_kd.runs import RunLayout

logger = logging.getLogger(__name__)

CACHE_KIND = 'pretrained'  # s3://<bucket>/<prefix>/cache/pretrained/<sha256>/<file>
CLASSIFIER_PREFIX = 'backbone.'  # mmcls / mmpretrain / mmaction checkpoints

# The seed's ImageNet weights: what MMAction2's configs name (the documented values of
# the pipeline's student_pretrained_url).  The file names carry the first 8 hex digits
# of their SHA-256 (torch.hub's and OpenMMLab's convention).
SEED_IMAGENET_WEIGHTS = {
    'MobileNetV2TSM': 'https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/'
    'mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth',  # mmcls://mobilenet_v2
    'ResNetTSM': 'https://download.pytorch.org/models/resnet50-0676ba61.pth',  # torchvision://resnet50
    'ResNet': 'https://download.pytorch.org/models/resnet50-11ad3fa6.pth',  # TSN-R50's URL
}


class PretrainedWeightsError(UserError):
    """A pretrained file that does not fit the student's backbone."""


def fetch_pretrained(
    url: str,
    dest_dir: str | os.PathLike,
    sha256: str | None = None,
    cache: RunLayout | str | None = None,
    **kwargs: Any,
) -> Path:
    """Fetch ImageNet weights as the teacher is fetched (``video_kd.download``).

    Verified against ``sha256``, atomic, retried; with a cache, kept in S3 under
    ``cache/pretrained/<sha256>/`` and copied from there by later runs.
    """
    try:
        return download.fetch_teacher(
            url, dest_dir, sha256=sha256, cache=cache, cache_kind=CACHE_KIND, **kwargs
        )
    except download.DownloadError as error:
        raise PretrainedWeightsError(f'pretrained weights {url}: {error}') from error


def apply_pretrained(cfg: Config, path: str | os.PathLike) -> dict[str, Any]:
    """Initialise the student's backbone of ``cfg`` from ``path``, in place; verified.

    Returns a report: ``backbone`` type, the ``file`` MMAction2 reads, ``loaded``
    (every float tensor of the backbone), ``file_tensors``, ``pretrained2d``.  Raises
    ``PretrainedWeightsError`` naming what was expected and what the file holds.
    """
    backbone = student_model_cfg(cfg).backbone
    weights_file, state = _backbone_weights(Path(path))
    backbone.pretrained = str(weights_file)
    if _accepts(backbone, 'pretrained2d'):
        backbone.pretrained2d = True  # TSM: MMAction2's 2D -> TSM loading path
    loaded = _load_and_check(backbone, state, Path(path))
    report = {
        'backbone': backbone.type,
        'file': str(weights_file),
        'loaded': loaded,
        'file_tensors': len(state),
        'pretrained2d': bool(backbone.get('pretrained2d', False)),
    }
    logger.info(
        'student backbone %s: ImageNet weights from %s, all %d tensors loaded '
        '(the file has %d; a classifier head is left out)',
        backbone.type,
        Path(path).name,
        loaded,
        len(state),
    )
    return report


# --------------------------------------------------------------------------- the file


def _backbone_weights(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(file MMAction2 will read, its state dict): a classifier checkpoint's backbone part.

    mmcls's own scheme (``mmcls://``) strips ``backbone.`` and drops the head before
    MMAction2 sees the weights; a local file gets no such treatment, so a copy with
    the backbone alone is written beside it.
    """
    state = _read_state_dict(path)
    if not any(key.startswith(CLASSIFIER_PREFIX) for key in state):
        return path, state
    backbone = {
        key[len(CLASSIFIER_PREFIX) :]: value
        for key, value in state.items()
        if key.startswith(CLASSIFIER_PREFIX)
    }
    out = path.with_name(f'{path.stem}_backbone.pth')
    save_checkpoint({'state_dict': backbone}, out)
    return out, backbone


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f'pretrained weights {path} do not exist')
    try:  # ImageNet files are plain tensors: no need to unpickle anything else
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(
            f'pretrained weights {path.name} are not a readable PyTorch state dict: '
            f'{one_line(error)}'
        ) from error
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise PretrainedWeightsError(f'pretrained weights {path.name} hold no state dict')
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


# --------------------------------------------------------------------------- the check


def _build(backbone_cfg: ConfigDict) -> torch.nn.Module:
    from mmaction.registry import MODELS
    from mmengine.registry import DefaultScope

    from video_kd.runtime import register_all_modules

    register_all_modules()
    with DefaultScope.overwrite_default_scope('mmaction'):  # whatever scope is current
        return MODELS.build(copy.deepcopy(backbone_cfg))


def _accepts(backbone_cfg: ConfigDict, argument: str) -> bool:
    import inspect

    from mmaction.registry import MODELS
    from mmengine.registry import DefaultScope

    from video_kd.runtime import register_all_modules

    register_all_modules()
    with DefaultScope.overwrite_default_scope('mmaction'):
        cls = MODELS.get(backbone_cfg.type)
    return cls is not None and argument in inspect.signature(cls).parameters


def _load_and_check(backbone_cfg: ConfigDict, state: dict[str, torch.Tensor], source: Path) -> int:
    """How many tensors MMAction2's own init_weights loaded: all of them, or it raises."""
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance()  # MMAction2's loaders log through it
    model = _build(backbone_cfg)
    tensors = _float_tensors(model)
    with torch.no_grad():
        for tensor in tensors.values():
            tensor.fill_(float('nan'))
    try:
        model.init_weights()
    except KeyError as error:  # ResNet's torchvision loader looks names up one by one
        raise _misfit(
            backbone_cfg, model, state, source, f'the file has no {error.args[0]}'
        ) from error
    except (RuntimeError, AttributeError) as error:  # strict loads, size mismatches
        raise _misfit(backbone_cfg, model, state, source, one_line(error)[:300]) from error
    missing = sorted(name for name, tensor in tensors.items() if torch.isnan(tensor).any())
    if missing:
        raise _misfit(
            backbone_cfg,
            model,
            state,
            source,
            f'{len(missing)} of {len(tensors)} backbone tensors not loaded '
            f'(e.g. {", ".join(missing[:4])})',
        )
    return len(tensors)


def _float_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating buffers (running stats); counters like num_batches_tracked
    are not weights and 2D files often leave them out."""
    named = dict(model.named_parameters())
    named.update((name, buf) for name, buf in model.named_buffers() if torch.is_floating_point(buf))
    return named


def _misfit(
    backbone_cfg: ConfigDict,
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: Path,
    what: str,
) -> PretrainedWeightsError:
    expected = describe_weights(model.state_dict())
    return PretrainedWeightsError(
        f"pretrained weights {source.name} do not fit the student's backbone "
        f'{backbone_cfg.type}: expected {expected}, found {describe_weights(state)}; {what}'
    )


def describe_weights(state: dict[str, torch.Tensor]) -> str:
    """What a state dict looks like: 'a ResNet-50 (N tensors)', 'a MobileNetV2 ...'."""
    count = f'{len(state)} tensors'
    keys = [key.replace('.net.', '.') for key in state]
    if any('patch_embed' in key for key in keys):
        return f'a Swin/ViT ({count})'
    if any(key.startswith('layer7.') for key in keys):
        return f'a MobileNetV2 ({count})'
    if any(key.startswith('layer4.') for key in keys):
        blocks = {key.split('.')[1] for key in keys if key.startswith('layer3.')}
        bottleneck = any('.conv3.' in key for key in keys)
        depth = {(6, True): 50, (23, True): 101, (36, True): 152, (2, False): 18}.get(
            (len(blocks), bottleneck), 34 if not bottleneck else None
        )
        return f'a ResNet-{depth} ({count})' if depth else f'a ResNet ({count})'
    return f'{count}, e.g. {", ".join(list(state)[:3])}'
