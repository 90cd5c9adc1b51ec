"""Teacher-logit cache: compute the teacher's logits once per augmented view, reuse them.

In logits distillation every training step runs the teacher forward on the
same clip the student sees.  The teacher is frozen, so for a given input its
logits never change: they can be computed once and stored next to the
dataset, and repeated or scheduled retraining (same data, same teacher)
skips the teacher entirely.

**Correct with augmentation.**  Training augments every clip (random frame
offsets, multi-scale crop, flip), so "the teacher's logits of a video" is not
one tensor.  This module makes the set of augmented views *finite and
reproducible* instead of turning augmentation off:

* ``SeededViews`` (an mmaction transform) wraps the random part of the train
  pipeline.  For every sample it draws a view index ``v`` in ``[0, K)`` from
  the dataloader's own RNG (so each epoch sees a different view), then runs
  the wrapped transforms with Python's and NumPy's global RNGs seeded from
  ``(seed, video, file size, v)`` and restores them afterwards.  The view is
  therefore a pure function of (video, v): the same frame indices, crop box
  and flip every time it is drawn, on any machine, rank or worker.
* The parameters that the transforms actually drew (``frame_inds``,
  ``crop_bbox``/``crop_quadruple``, ``img_shape``, ``flip``...) are recorded
  in the sample's metainfo (``kd_view``), and the cache key ``kd_view_key``
  is the hash of those parameters plus the video and ``v``.  Two different
  crops are two keys; a transform whose randomness somehow escaped the
  seeding would give a different key (a miss), never a wrong hit.
* Everything that decides the teacher's input or output and is *not* in the
  key is in the cache's location: the teacher checkpoint's sha256 and a hash
  of the view spec (the wrapped pipeline, K, seed, the teacher model config,
  the data preprocessor and the teacher recorders)::

      <base>/teacher_logits/<teacher sha256>/<view spec hash>/<shard>.pt

  ``<base>`` is the dataset's S3 prefix (or a local directory).  Each writer
  (rank, epoch) adds a new shard holding only the entries it computed, so
  nothing is ever overwritten and concurrent runs cannot lose each other's
  entries; loading merges all shards.

The trade-off: training draws from K fixed views per video instead of a fresh
random view each epoch (K=4 by default, ``teacher_logit_cache.num_views``).

``CachedLogitsSingleTeacherDistill`` (registered in MMRazor's MODELS) is
``SingleTeacherDistill`` that fills the teacher recorders from the cache and
runs the teacher only on the samples of a batch that miss.  The teacher runs
on misses as ``video_kd.distill.fast_teacher.InferenceTeacherDistill`` runs it (eval
mode, inference_mode, optional bf16): its logits are then deterministic
(MMRazor's own step runs the teacher in train mode with only the norm layers
frozen, so its dropout / drop-path make each teacher forward slightly random).

Switch it on with the training option ``teacher_logit_cache``
(``video_kd.distill.train_config.TrainOptions``: ``python -m video_kd.distill.train ...
--teacher-logit-cache`` or the pipeline parameter): the run's config is resolved
with the cache next to the dataset's videos (``<dataset>/teacher_logits/``).
Off by default.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mmaction.registry import TRANSFORMS
from mmcv.transforms import BaseTransform
from mmengine.config import ConfigDict
from mmengine.dataset import Compose
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmrazor.models.task_modules.recorder import ModuleOutputsRecorder
from mmrazor.registry import MODELS

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.errors import UserError
from video_kd.distill.fast_teacher import InferenceTeacherDistill
from video_kd.openmmlab.config import is_distill_config
from video_kd.storage import s3

if TYPE_CHECKING:
    from mmaction.structures import ActionDataSample
    from mmengine.config import Config
    from mmengine.runner import Runner

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VIEW_KEY = 'kd_view_key'
VIEW_PARAMS = 'kd_view'
CACHE_DIR = 'teacher_logits'
DEFAULT_NUM_VIEWS = 4
# What the random transforms of mmaction's video pipelines draw (or derive from draws).
PARAM_KEYS = (
    'frame_inds',
    'clip_len',
    'frame_interval',
    'num_clips',
    'original_shape',
    'img_shape',
    'crop_bbox',
    'crop_quadruple',
    'flip',
    'flip_direction',
    'scale_factor',
)


# --------------------------------------------------------------------------- views
def _plain(value: Any) -> Any:
    """JSON-able form of a transform parameter (numpy arrays and scalars included)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def digest(obj: Any, length: int = 64) -> str:
    """sha256 of the canonical JSON of obj."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(',', ':'))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Run a block with Python's, NumPy's and torch's CPU RNG seeded; restore them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@TRANSFORMS.register_module(force=True)
class SeededViews(BaseTransform):
    """Run `transforms` as one of `num_views` fixed, reproducible views of each video.

    Adds ``kd_view`` (video, view index, drawn parameters) and
    ``kd_view_key`` (their hash) to the results; put ``kd_view_key`` in
    ``PackActionInputs.meta_keys`` so the model sees it.
    """

    def __init__(
        self,
        transforms: list,
        num_views: int = DEFAULT_NUM_VIEWS,
        seed: int = 0,
        root: str | None = None,
    ):
        if int(num_views) < 1:
            raise UserError(f'num_views must be >= 1, got {num_views}')
        self.num_views, self.seed, self.root = int(num_views), int(seed), root
        self.transforms = Compose(
            [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in transforms]
        )

    def video_id(self, filename: str) -> str:
        if self.root:
            rel = os.path.relpath(filename, self.root)
            if not rel.startswith('..'):
                return Path(rel).as_posix()
        return '/'.join(Path(filename).parts[-2:])  # <class>/<clip>.mp4

    def transform(self, results: dict) -> dict:
        view = int(np.random.randint(self.num_views))  # the loader's RNG: varies by epoch
        filename = results.get('filename', '')
        video = self.video_id(filename)
        size = os.path.getsize(filename) if filename and os.path.isfile(filename) else -1
        seed = int(digest([self.seed, video, size, view], 16), 16)
        with seeded_rngs(seed):
            results = self.transforms(results)
        if results is None:
            return None
        params = {k: _plain(results[k]) for k in PARAM_KEYS if k in results}
        results[VIEW_PARAMS] = dict(video=video, size=size, view=view, **params)
        results[VIEW_KEY] = digest(results[VIEW_PARAMS], 32)
        return results

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(num_views={self.num_views}, seed={self.seed}, '
            f'transforms={self.transforms})'
        )


# --------------------------------------------------------------------------- storage
def _is_s3(uri: str) -> bool:
    return str(uri).startswith('s3://')


class LogitCache:
    """Teacher logits by view key: ``{key: {recorder name: tensor}}``, plus each view's params."""

    def __init__(self):
        self.entries: dict[str, dict[str, torch.Tensor]] = {}
        self.views: dict[str, dict] = {}
        self.new_keys: list[str] = []
        self.shards_loaded = 0

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict[str, torch.Tensor]:
        return self.entries[key]

    def put(self, key: str, logits: dict[str, torch.Tensor], view: dict | None = None) -> None:
        if key in self.entries:
            return
        self.entries[key] = {name: t.detach().to('cpu').clone() for name, t in logits.items()}
        self.views[key] = view or {}
        self.new_keys.append(key)

    # one shard: a torch file of plain tensors and JSON-able dicts
    def shard_bytes(self, keys: list[str]) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                'format': FORMAT_VERSION,
                'entries': {k: self.entries[k] for k in keys},
                'views': {k: self.views.get(k, {}) for k in keys},
            },
            buffer,
        )
        return buffer.getvalue()

    def merge_shard(self, data: bytes, where: str = '') -> int:
        shard = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
        if shard.get('format') != FORMAT_VERSION:
            log.warning(
                'teacher-logit cache shard %s has format %s (want %s): ignored',
                where,
                shard.get('format'),
                FORMAT_VERSION,
            )
            return 0
        added = 0
        for key, logits in shard['entries'].items():
            if key not in self.entries:
                self.entries[key] = logits
                self.views[key] = shard['views'].get(key, {})
                added += 1
        self.shards_loaded += 1
        return added

    def load(self, location: str) -> int:
        """Merge every shard under `location` (s3:// prefix or local dir); returns entries added."""
        added = 0
        if _is_s3(location):
            for uri in s3.list_uris(location.rstrip('/') + '/'):
                if uri.endswith('.pt'):
                    added += self.merge_shard(s3.read_bytes(uri), uri)
        elif Path(location).is_dir():
            for path in sorted(Path(location).glob('*.pt')):
                added += self.merge_shard(path.read_bytes(), str(path))
        return added

    def flush(self, location: str, writer: str) -> str | None:
        """Write the entries added since the last flush as a new shard; returns its URI/path."""
        keys, self.new_keys = self.new_keys, []
        if not keys:
            return None
        name = f'{writer}.pt'
        data = self.shard_bytes(keys)
        if _is_s3(location):
            uri = s3.join_uri(location, name)
            # conditional: a shard, once written, is never replaced (names are per writer)
            if not s3.create_if_absent(uri, data):
                raise s3.ObjectExistsError(f'refusing to overwrite teacher-logit shard {uri}')
        else:
            Path(location).mkdir(parents=True, exist_ok=True)
            uri = str(Path(location) / name)
            part = Path(uri + '.part')
            part.write_bytes(data)
            os.replace(part, uri)
        log.info('teacher-logit cache: %d new entries -> %s', len(keys), uri)
        return uri


# --------------------------------------------------------------------------- the algorithm
def split_per_sample(record: torch.Tensor, num_samples: int) -> list[torch.Tensor]:
    """A batch record (N*rows, ...) -> N tensors of `rows` rows (TSM: rows = segments)."""
    if record.shape[0] % num_samples:
        raise UserError(
            f'a teacher record of {record.shape[0]} rows does not split into {num_samples} samples'
        )
    return list(record.split(record.shape[0] // num_samples))


@MODELS.register_module(force=True)
class CachedLogitsSingleTeacherDistill(InferenceTeacherDistill):
    """SingleTeacherDistill whose teacher outputs come from a LogitCache when they can.

    The cache key of each sample is its ``kd_view_key`` metainfo (set by
    ``SeededViews``).  Misses run the teacher as ``InferenceTeacherDistill``
    does (eval mode, inference_mode, ``teacher_precision``) on the missing
    samples only; their per-sample outputs go into the cache.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        recorders = self.distiller.teacher_recorders.recorders
        bad = [n for n, r in recorders.items() if not isinstance(r, ModuleOutputsRecorder)]
        if bad or not recorders:
            raise UserError(
                'the teacher-logit cache needs ModuleOutputs teacher '
                f'recorders only (got {bad or "none"})'
            )
        self.logit_cache = LogitCache()
        self.cache_hits = 0
        self.cache_misses = 0
        self.last_misses = 0

    def teacher_outputs(
        self, batch_inputs: torch.Tensor, data_samples: list[ActionDataSample]
    ) -> list[dict[str, torch.Tensor]]:
        """Per-sample teacher records, from a real teacher forward."""
        records = {
            name: split_per_sample(record, len(data_samples))
            for name, record in self.run_teacher(batch_inputs, data_samples).items()
        }
        return [{name: per[i] for name, per in records.items()} for i in range(len(data_samples))]

    def teacher_records(
        self, batch_inputs: torch.Tensor, data_samples: list[ActionDataSample] | None
    ) -> dict[str, torch.Tensor]:
        keys = [s.metainfo.get(VIEW_KEY) for s in data_samples or ()]
        if data_samples is None or any(k is None for k in keys):
            raise UserError(
                f'data samples carry no {VIEW_KEY}: the train pipeline must wrap its '
                'random transforms in SeededViews and list it in PackActionInputs '
                'meta_keys (video_kd.distill.logit_cache.enable_cache does both)'
            )
        missing = [i for i, k in enumerate(keys) if k not in self.logit_cache]
        if missing:
            outputs = self.teacher_outputs(
                batch_inputs[missing], [data_samples[i] for i in missing]
            )
            for i, out in zip(missing, outputs, strict=False):
                self.logit_cache.put(keys[i], out, data_samples[i].metainfo.get(VIEW_PARAMS))
        self.last_misses = len(missing)
        self.cache_misses += len(missing)
        self.cache_hits += len(keys) - len(missing)
        device = batch_inputs.device
        return {
            name: torch.cat([self.logit_cache.get(k)[name] for k in keys]).to(device)
            for name in self.distiller.teacher_recorders.recorders
        }

    def fill_teacher_recorders(
        self, batch_inputs: torch.Tensor, data_samples: list[ActionDataSample]
    ) -> int:
        """Fill the teacher recorders for this batch; returns how many samples missed."""
        self.set_teacher_records(self.teacher_records(batch_inputs, data_samples))
        return self.last_misses

    def loss(
        self, batch_inputs: torch.Tensor, data_samples: list[ActionDataSample] | None = None
    ) -> dict[str, torch.Tensor]:
        losses = super().loss(batch_inputs, data_samples)
        losses['teacher_cache_hit'] = torch.tensor(
            1.0 - self.last_misses / max(len(data_samples or ()), 1), device=batch_inputs.device
        )
        return losses


# --------------------------------------------------------------------------- the hook
@HOOKS.register_module(force=True)
class TeacherLogitCacheHook(Hook):
    """Load the cache before training; add a shard of new entries after each epoch."""

    priority = 'NORMAL'

    def __init__(self, location: str, flush_every_epoch: bool = True):
        self.location = location
        self.flush_every_epoch = flush_every_epoch
        self.writer = f'{time.strftime("%Y%m%d-%H%M%S", time.gmtime())}-{uuid.uuid4().hex[:8]}'

    @staticmethod
    def algorithm(runner: Runner) -> CachedLogitsSingleTeacherDistill:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not hasattr(model, 'logit_cache'):
            raise UserError(
                f'{type(model).__name__} has no teacher-logit cache: use '
                'model.type=CachedLogitsSingleTeacherDistill'
            )
        return model

    def before_train(self, runner: Runner) -> None:
        model = self.algorithm(runner)
        added = model.logit_cache.load(self.location)
        runner.logger.info(
            f'teacher-logit cache {self.location}: {added} entries loaded from '
            f'{model.logit_cache.shards_loaded} shards'
        )

    def _flush(self, runner: Runner, tag: str) -> None:
        model = self.algorithm(runner)
        model.logit_cache.flush(self.location, f'{self.writer}-{tag}-rank{get_rank()}')

    def after_train_epoch(self, runner: Runner) -> None:
        if self.flush_every_epoch:
            self._flush(runner, f'epoch{runner.epoch}')

    def after_train(self, runner: Runner) -> None:
        self._flush(runner, 'end')
        model = self.algorithm(runner)
        total = max(model.cache_hits + model.cache_misses, 1)
        runner.logger.info(
            f'teacher-logit cache: {model.cache_hits} hits, '
            f'{model.cache_misses} misses ({model.cache_hits / total:.1%} hits); '
            f'{len(model.logit_cache)} entries'
        )


# --------------------------------------------------------------------------- config
def view_spec(cfg: Config, inner_pipeline: list, num_views: int, seed: int) -> dict:
    """Everything besides the key and the teacher weights that decides a cached tensor."""

    def plain(node: Any) -> Any:
        return node.to_dict() if hasattr(node, 'to_dict') else node

    model = cfg.model
    return {
        'format': FORMAT_VERSION,
        'pipeline': plain(inner_pipeline),
        'num_views': num_views,
        'seed': seed,
        'teacher': plain(model.teacher),
        'data_preprocessor': plain(
            model.get('data_preprocessor') or model.architecture.get('data_preprocessor')
        ),
        'teacher_recorders': plain(model.distiller.get('teacher_recorders')),
        # only when not fp32, so that fp32 caches made before this option keep their location
        **(
            {'teacher_precision': model.teacher_precision}
            if model.get('teacher_precision', 'fp32') != 'fp32'
            else {}
        ),
    }


def cache_location(base: str, teacher_sha256: str, spec_hash: str) -> str:
    if _is_s3(base):
        return s3.join_uri(base, CACHE_DIR, teacher_sha256, spec_hash)
    return str(Path(base) / CACHE_DIR / teacher_sha256 / spec_hash)


def enable_cache(cfg: Config, base: str, teacher_sha256: str | None = None) -> str:
    """Switch a KD config to the cached algorithm and seeded views; returns the cache location.

    ``base``: s3:// prefix or local directory (the dataset's, usually).
    ``cfg.teacher_logit_cache`` may set ``num_views`` (default 4) and ``seed`` (0).
    """
    if not is_distill_config(cfg):
        raise UserError('the teacher-logit cache needs a distillation config')
    options = dict(cfg.get('teacher_logit_cache') or {})
    num_views = int(options.get('num_views', DEFAULT_NUM_VIEWS))
    seed = int(options.get('seed', 0))
    if teacher_sha256 is None:
        if not cfg.model.get('teacher_ckpt'):
            raise UserError('the teacher-logit cache needs the teacher checkpoint')
        teacher_sha256 = s3.sha256_file(cfg.model.teacher_ckpt)
    dataset = cfg.train_dataloader.dataset
    pipeline = list(dataset.pipeline)
    packs = [i for i, t in enumerate(pipeline) if t.get('type') == 'PackActionInputs']
    if not packs or packs[-1] != len(pipeline) - 1:
        raise UserError('the train pipeline must end with PackActionInputs')
    inner, pack = pipeline[:-1], ConfigDict(pipeline[-1])
    if any(t.get('type') == 'SeededViews' for t in inner):
        raise UserError('the train pipeline already has SeededViews')
    meta_keys = tuple(pack.get('meta_keys', ('img_shape', 'img_key', 'video_id', 'timestamp')))
    pack.meta_keys = meta_keys + tuple(k for k in (VIEW_KEY, VIEW_PARAMS) if k not in meta_keys)
    spec_hash = digest(view_spec(cfg, inner, num_views, seed), 16)
    root = (dataset.get('data_prefix') or {}).get('video')
    dataset.pipeline = [
        dict(type='SeededViews', transforms=inner, num_views=num_views, seed=seed, root=root),
        pack,
    ]
    cfg.model.type = 'CachedLogitsSingleTeacherDistill'
    location = cache_location(base, teacher_sha256, spec_hash)
    hooks = list(cfg.get('custom_hooks') or [])
    hooks.append(dict(type='TeacherLogitCacheHook', location=location))
    cfg.custom_hooks = hooks
    return location
