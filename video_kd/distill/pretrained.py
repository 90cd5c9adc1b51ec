"""ImageNet weights for the student's backbone: fetched from a URL, loaded as MMAction2 means, verified.

The seed's students start from ImageNet: MMAction2's configs name the weights by URL
(``mmcls://mobilenet_v2``, ``torchvision://resnet50``, https://download.pytorch.org/...)
and its backbones load them in their own way: TSM backbones inflate 2D weights into
the shifted network (``pretrained2d=True``: ``.net`` wrappers, ConvModule names), the
plain ResNet maps torchvision names.  Runs here are offline, so ``video_kd.openmmlab.config``
drops those URLs; this module puts the weights back from a file the pipeline fetched
like the teacher (https:// or s3://, sha256-checked, cached by checksum in S3):

    path = fetch_pretrained(url, work_dir, sha256, cache=layout)
    report = apply_pretrained(cfg, path)   # before the Runner builds the model

The seed's own files (``SEED_IMAGENET_WEIGHTS``) carry the first 8 hex digits of their
SHA-256 in their names; a sha256 given for one must agree with them, and so must the
content of one fetched without a sha256.  Without one, the train step fetches the file
once (``pin_pretrained``), caches it under the SHA-256 it computed and logs that value.  Their full values
are the user's to pin (this project is built offline): ``python -m video_kd.distill.pretrained
CONFIG`` fetches the config's seed weights, checks them and prints the value.

``apply_pretrained`` points the student's backbone at the file, with MMAction2's own
loading path switched on, and checks it: the backbone is built once with every
floating-point tensor set to NaN, MMAction2's ``init_weights`` loads the file, and any
tensor still NaN was not loaded.  MMAction2 itself would only log that (ResNet) or load
a subset without a word (``pretrained2d=False``); here it is one error naming them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import re
import sys
import tempfile
import textwrap
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from mmengine.config import Config, ConfigDict

from video_kd.core.checks import check_sha256
from video_kd.core.errors import UserError, one_line, run_cli, setup_logging
from video_kd.openmmlab.checkpoints import save_checkpoint
from video_kd.openmmlab.config import load_config, student_model_cfg
from video_kd.openmmlab.runtime import register_all_modules
from video_kd.runs import RunLayout
from video_kd.storage import download, s3

if TYPE_CHECKING:
    from mmengine.model import BaseModule

logger = logging.getLogger(__name__)

CACHE_KIND = 'pretrained'  # s3://<bucket>/<prefix>/cache/pretrained/<sha256>/<file>
CLASSIFIER_PREFIX = 'backbone.'  # mmcls / mmpretrain / mmaction checkpoints

# The seed's ImageNet weights, by student backbone: what MMAction2's configs name (the
# documented values of the pipeline's student_pretrained_url; README, --help below).
SEED_IMAGENET_WEIGHTS = {
    'MobileNetV2TSM': 'https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/'
    'mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth',  # mmcls://mobilenet_v2
    'ResNetTSM': 'https://download.pytorch.org/models/resnet50-0676ba61.pth',  # torchvision://resnet50
    'ResNet': 'https://download.pytorch.org/models/resnet50-11ad3fa6.pth',  # TSN-R50's URL
}
# These hosts name each file <name>-<first 8+ hex digits of its SHA-256>.pth (torch.hub's
# check_hash and OpenMMLab's publish_model write and read them so), and so do copies of
# the seed's files; elsewhere a name like model-20200708.pth would be taken for one.
HASH_NAMING_HOSTS = ('download.openmmlab.com', 'download.pytorch.org')
_SEED_FILE_NAMES = {url.rsplit('/', 1)[-1] for url in SEED_IMAGENET_WEIGHTS.values()}
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.pth$')


class PretrainedWeightsError(UserError):
    """A pretrained file that does not fit the student's backbone."""


def fetch_pretrained(
    url: str,
    dest_dir: str | os.PathLike,
    sha256: str | None = None,
    cache: RunLayout | str | None = None,
    **kwargs: Any,
) -> Path:
    """Fetch ImageNet weights as the teacher is fetched (``video_kd.storage.download``).

    Verified against ``sha256``, atomic, retried; with a cache, kept in S3 under
    ``cache/pretrained/<sha256>/`` and copied from there by later runs.  A ``sha256``
    that contradicts the hash prefix in the file's name (``HASH_NAMING_HOSTS``) is
    refused before anything is fetched.
    """
    sha256 = check_sha256(sha256, name='student_pretrained_sha256') or None
    check_name_hash(url, sha256)
    fits = kwargs.pop('check', None)  # e.g. ``check_fit``: run before the file is cached

    def checked(path: Path) -> None:
        if not sha256:  # unpinned: the hash prefix in the name is all there is to check
            check_content_hash(url, path)
        if fits:
            fits(path)

    try:
        return download.fetch_teacher(
            url, dest_dir, sha256=sha256, cache=cache, cache_kind=CACHE_KIND, check=checked,
            **kwargs,
        )  # fmt: skip
    except download.DownloadError as error:
        raise PretrainedWeightsError(f'pretrained weights {url}: {error}') from error


def pin_pretrained(
    url: str, dest_dir: str | os.PathLike, cache: RunLayout | str, **kwargs: Any
) -> tuple[str, str]:
    """No sha256 given: fetch ``url`` once, take its SHA-256 (checked against the hash
    prefix in its name, ``HASH_NAMING_HOSTS``) and cache it in S3 under that checksum, as
    ``fetch_pretrained`` caches pinned weights; returns (cache URI, sha256).  Whatever reads
    the cached copy then checks it against that value; the log says to pin it.
    """
    path = fetch_pretrained(url, dest_dir, None, **kwargs)  # the cache is keyed by checksum
    sha256 = check_content_hash(url, path)
    uri = download.store_in_cache(path, cache, sha256, CACHE_KIND)
    logger.warning(
        'student_pretrained_sha256 not given: %s has SHA-256 %s%s; the training processes '
        'read the copy cached at %s and check it against that value. Pin it: '
        'student_pretrained_sha256 / --student-pretrained-sha256 %s',
        url,
        sha256,
        f' (its name says {name_hash(url)}...: it agrees)' if name_hash(url) else '',
        uri,
        sha256,
    )
    return uri, sha256


def check_content_hash(source: str, path: str | os.PathLike) -> str:
    """The SHA-256 of ``path``, fetched from ``source``; when ``source``'s name carries a
    hash prefix (``name_hash``) the content must agree with it, else the file is deleted
    and one error says so."""
    path = Path(path)
    sha256 = s3.sha256_file(path)
    prefix = name_hash(source)
    if prefix and not sha256.startswith(prefix):
        path.unlink(missing_ok=True)
        raise PretrainedWeightsError(
            f'{path.name} has SHA-256 {sha256}, its name says {prefix}...: a corrupt or '
            'replaced file; do not pin it'
        )
    return sha256


def name_hash(source: str) -> str | None:
    """The SHA-256 prefix ('0676ba61') in the file name of a URL on ``HASH_NAMING_HOSTS``
    or of a copy of the seed's weights (any scheme, a path); None for other names."""
    parts = urllib.parse.urlsplit(source)
    name = parts.path.rsplit('/', 1)[-1]
    on_hashing_host = parts.scheme in ('http', 'https') and parts.hostname in HASH_NAMING_HOSTS
    if not on_hashing_host and name not in _SEED_FILE_NAMES:
        return None
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def check_name_hash(url: str, sha256: str | None) -> None:
    """A given ``sha256`` must start with the hash prefix in the URL's file name."""
    prefix = name_hash(url)
    if sha256 and prefix and not sha256.startswith(prefix):
        name = urllib.parse.urlsplit(url).path.rsplit('/', 1)[-1]
        raise PretrainedWeightsError(
            f'student_pretrained_sha256 {sha256[:12]}... is not the SHA-256 of {name}: its '
            f'name carries the first {len(prefix)} hex digits, {prefix}; pin the full value '
            f'that `python -m video_kd.distill.pretrained CONFIG {url}` prints'
        )


def seed_weights(cfg: Config) -> str | None:
    """The seed's ImageNet weights (URL) for the student of ``cfg``; None if it has none."""
    return SEED_IMAGENET_WEIGHTS.get(student_model_cfg(cfg).backbone.type)


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


def check_fit(cfg: Config, path: str | os.PathLike) -> dict[str, Any]:
    """``apply_pretrained`` on a copy of ``cfg``: the weights fit the student's backbone
    (``PretrainedWeightsError`` if not), ``cfg`` left as it is.  The train step runs it
    before publishing the run's config, so a misfit is refused while nothing is locked."""
    return apply_pretrained(copy.deepcopy(cfg), path)


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


def _build(backbone_cfg: ConfigDict) -> BaseModule:
    from mmaction.registry import MODELS
    from mmengine.registry import DefaultScope

    register_all_modules()
    with DefaultScope.overwrite_default_scope('mmaction'):  # whatever scope is current
        return MODELS.build(copy.deepcopy(backbone_cfg))


def _accepts(backbone_cfg: ConfigDict, argument: str) -> bool:
    import inspect

    from mmaction.registry import MODELS
    from mmengine.registry import DefaultScope

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
    named: dict[str, torch.Tensor] = dict(model.named_parameters())
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


# --------------------------------------------------------------------------- CLI


def _seed_weights_text() -> str:
    """One line per backbone: argparse would break the URLs at their hyphens."""
    lines = [f'  {backbone}: {url}' for backbone, url in SEED_IMAGENET_WEIGHTS.items()]
    return "the seed's ImageNet weights, by student backbone:\n" + '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m video_kd.distill.pretrained CONFIG [SOURCE]``: check weights, print their SHA-256."""
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.distill.pretrained',
        description=textwrap.fill(
            "Fetch ImageNet weights for a config's student (default: the seed's for its "
            'backbone), check them against the hash prefix in their file name and load them '
            'into the student the way training does (every backbone tensor), then print their '
            'SHA-256: the value to pin as student_pretrained_sha256 / '
            '--student-pretrained-sha256.',
            break_on_hyphens=False,
        ),
        epilog=_seed_weights_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('config', help='config name or path (its student is the target)')
    parser.add_argument(
        'source',
        nargs='?',
        help="https://, s3:// URL or path of the weights (default: the seed's for the config)",
    )
    parser.add_argument('--sha256', help='expected SHA-256 (hex), if you have one')
    args = parser.parse_args(argv)
    setup_logging()
    # stdout is the result alone (scripts read it); mmengine's logger, created on first
    # use, writes to the sys.stdout of that moment: make that stderr
    with contextlib.redirect_stdout(sys.stderr):
        source, sha256 = _check_weights(args.config, args.source, args.sha256)
    print(f'{sha256}  {source}')
    return 0


def _check_weights(config: str, source: str | None, sha256: str | None) -> tuple[str, str]:
    """(source, its SHA-256) once the weights passed every check of ``main``."""
    cfg = load_config(config)
    source = source or seed_weights(cfg)
    if not source:
        raise PretrainedWeightsError(
            f"{config}: the seed gives no ImageNet weights for its student's backbone "
            f'{student_model_cfg(cfg).backbone.type}; name the weights (SOURCE)'
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = fetch_pretrained(source, tmp, sha256)  # checked against its name's hash
        sha256 = s3.sha256_file(path)
        apply_pretrained(cfg, path)  # the student takes every tensor, or one error line
    return source, sha256


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
