"""Scores of fixed models, cached: a retraining with the same teacher and val set scores only
the new student.

A model's scores (``distill.evaluate.evaluate``: accuracies, confusion matrix, each sample's
prediction) depend on three things only, which key the entry::

    <dataset>/eval_scores/<checkpoint sha256>/<val list sha256>/<test config hash>.json

``<dataset>`` is the directory of the val videos when they are in S3 outside the run (the
teacher-logit cache's place, ``<dataset>/teacher_logits/``); a dataset inside the run
(``generate://``) or on a mounted volume has its entries in the bucket's shared cache,
under a hash of where it came from.  An entry records its key; one whose record differs
from its key (a corrupt or foreign object) is a miss, logged, never a score.  Entries are
written once, conditionally (``s3.create_if_absent``): concurrent runs cannot tear one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, cast

from video_kd.core.artifacts import DatasetContents, ModelScores, split_videos_uri
from video_kd.distill.train_config import dataset_dir
from video_kd.runs import RunLayout
from video_kd.storage import s3

log = logging.getLogger(__name__)

CACHE_DIR = 'eval_scores'
FORMAT = 1


ScoreKey = dict[str, str]


def score_key(checkpoint_sha256: str, val_list_sha256: str, config_hash: str) -> ScoreKey:
    """What decides a model's scores: checkpoint, val list and test config."""
    return {
        'checkpoint_sha256': checkpoint_sha256.lower(),
        'val_list_sha256': val_list_sha256.lower(),
        'config_hash': config_hash,
    }


def dataset_cache_root(dataset: str) -> str:
    """The score entries of a dataset in S3 outside any run: ``<dataset>/eval_scores``."""
    return s3.join_uri(dataset, CACHE_DIR)


def cache_root(data_meta: DatasetContents, layout: RunLayout) -> str:
    """Where a dataset's score entries go (see the module doc)."""
    videos = split_videos_uri(data_meta, 'val')
    if videos.startswith('s3://') and not videos.startswith(layout.root + '/'):
        return dataset_cache_root(dataset_dir(videos))
    origin = json.dumps(
        [data_meta.get('source', ''), videos if videos.startswith('/') else ''], sort_keys=True
    )
    return layout.shared_uri(CACHE_DIR, hashlib.sha256(origin.encode()).hexdigest()[:16])


def entry_uri(root: str, key: ScoreKey) -> str:
    return s3.join_uri(
        root, key['checkpoint_sha256'], key['val_list_sha256'], f'{key["config_hash"]}.json'
    )


def lookup(root: str, key: ScoreKey, name: str) -> ModelScores | None:
    """The cached scores for ``key``, or None (absent, or an entry that is not for it)."""
    uri = entry_uri(root, key)
    try:
        entry = s3.read_json(uri)
    except s3.ObjectNotFoundError:
        log.info('%s: not in the score cache (%s): scoring it', name, uri)
        return None
    except (s3.S3Error, ValueError) as exc:
        log.warning('%s: score cache entry %s unreadable (%s): a miss, scoring it', name, uri, exc)
        return None
    recorded = entry.get('key') if isinstance(entry, dict) else None
    if recorded != key or entry.get('format') != FORMAT or 'scores' not in entry:
        log.warning(
            '%s: score cache entry %s records another key (%s, want %s): a miss, scoring it',
            name,
            uri,
            recorded,
            key,
        )
        return None
    log.info('%s: score cache hit (%s): not scored again', name, uri)
    return cast(ModelScores, entry['scores'])


def store(root: str, key: ScoreKey, scores: ModelScores) -> bool:
    """Cache ``scores`` under ``key`` unless an entry is there already; True when stored."""
    uri = entry_uri(root, key)
    body: dict[str, Any] = {'format': FORMAT, 'key': key, 'scores': scores}
    created = s3.create_if_absent(uri, json.dumps(body), content_type='application/json')
    log.info('score cache: %s %s', 'stored' if created else 'kept the entry already at', uri)
    return created
