"""The five pipeline steps, shared by the KFP components and their plain entry points.

Each step reads its inputs from S3, writes its outputs to S3 under the run's
directory (``s3://<bucket>/<prefix>/<run-id>/<step>/...``), records them in
the run's ``manifest.json`` and returns a small dict: the metadata of its KFP
output artifact (S3 URIs, checksums, counts).  The KFP components
(``components/*/component.py``) and the ``python -m components.<step>``
entry points are thin wrappers around the functions here, so what runs in a
pipeline is what runs alone.

Run context: the data prep step picks the run id and claims the run's
directory; every later step gets the run from its input artifact's metadata
(``run_root``), never from a parameter of its own, so a step cannot write
into another run's directory.

The training step has two halves:

* ``train`` (the KFP step) builds a ``PyTorchJob`` whose pods run
  ``torchrun -m video_kd.steps train-pod ...`` and waits for it, or in
  ``local`` mode runs the same command under ``torchrun`` on this machine
  with the env vars a pod gets;
* ``train_pod`` (inside each pod) downloads data and teacher from S3, resumes
  from the run's last checkpoint in S3 if there is one, and trains with
  ``video_kd.train`` plus ``S3CheckpointHook``, which uploads each checkpoint
  as soon as it is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from video_kd import s3
from video_kd.fast_teacher import PRECISIONS

log = logging.getLogger('video_kd.steps')

GENERATED_SCHEME = 'generate://'
DEFAULT_SECRET = 'video-kd-s3-credentials'
CLAIM_NAME = 'run.json'
_RUN_ID_OK = re.compile(r'[^A-Za-z0-9._-]+')
_UNRESOLVED = re.compile(r'\{\{.*\}\}')
# Non-secret S3 settings a PyTorchJob pod needs; credentials come from the Secret.
S3_PLAIN_ENV = ('S3_ENDPOINT_URL', 'AWS_ENDPOINT_URL', 'AWS_DEFAULT_REGION')


class StepError(RuntimeError):
    """A step cannot go on; the message says why in one line."""


@contextlib.contextmanager
def scratch_dir(workdir: str | Path | None, step: str) -> Iterator[Path]:
    """A step's local working space.

    ``workdir`` when given (the caller's; kept).  Otherwise a temporary
    directory, removed when the step succeeds: everything a step keeps is in
    S3 by then, and a local run or a long-lived node must not fill its disk
    with copies (a training attempt alone holds ~0.5 GB of checkpoints).  A
    failed step's directory is kept, and named in the log, for inspection.
    """
    if workdir:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=f'video_kd_{step}_'))
    try:
        yield path
    except BaseException:
        if any(path.iterdir()):
            log.warning('%s failed; its scratch directory %s is kept for inspection', step, path)
        else:
            path.rmdir()
        raise
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- run context


def new_run_id(job_id: str = '') -> str:
    """``<UTC time>-<KFP run id>``: sorts by time, and names the KFP run it came from.

    ``job_id`` is the KFP run's id (a UUID on a cluster, a random number in
    the local runner); an unresolved placeholder or nothing gives a random
    suffix.
    """
    job_id = '' if not job_id or _UNRESOLVED.search(job_id) else job_id
    suffix = _RUN_ID_OK.sub('-', job_id).strip('-.') or uuid.uuid4().hex[:8]
    return f'{time.strftime("%Y%m%d-%H%M%S", time.gmtime())}-{suffix}'


layout_from_root = s3.RunLayout.from_root


def run_info(layout: s3.RunLayout) -> dict[str, str]:
    """What every artifact's metadata carries about its run."""
    return {'run_id': layout.run_id, 'run_root': layout.root, 'manifest_uri': layout.manifest_uri}


def claim_run(layout: s3.RunLayout, job_id: str = '') -> None:
    """Make the run directory ours, or fail if another run already uses it.

    A retry of the same KFP run (same ``job_id``) may continue in it.
    """
    claim_uri = s3.join_uri(layout.root, CLAIM_NAME)
    existing = s3.list_uris(layout.root + '/')
    if existing:
        owner = None
        if claim_uri in existing:
            bucket, key = s3.parse_s3_uri(claim_uri)
            body = s3.s3_client().get_object(Bucket=bucket, Key=key)['Body'].read()
            owner = json.loads(body).get('job_id')
        if not job_id or owner != job_id:
            raise StepError(
                f'run directory {layout.root}/ is already used by another run '
                f'({len(existing)} objects); a run never writes into another '
                "run's directory: choose another run id or leave it empty"
            )
        log.info('run %s: continuing in %s (retry of the same KFP run)', layout.run_id, layout.root)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CLAIM_NAME
        path.write_text(
            json.dumps(
                {
                    'run_id': layout.run_id,
                    'job_id': job_id,
                    'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                },
                indent=2,
            )
        )
        s3.upload_file(path, claim_uri)


def _publish(layout: s3.RunLayout, step: str, local: str | Path, *parts: str) -> s3.ManifestEntry:
    from video_kd.s3_hook import publish

    return publish(s3.Manifest.load(layout), step, local, layout.uri(step, *parts))


def _entry_meta(entry: s3.ManifestEntry) -> dict[str, Any]:
    return {'s3_uri': entry.uri, 'sha256': entry.sha256, 'size_bytes': entry.size_bytes}


def fetch_verified(uri: str, dest: Path, sha256: str | None = None) -> Path:
    """Download one object and check its checksum (from the manifest) if given.

    download.fetch_verified makes it atomic: a mismatching file never lands at dest.
    """
    from video_kd.download import ChecksumMismatchError
    from video_kd.download import fetch_verified as fetch_atomically

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return fetch_atomically(uri, dest, sha256, lambda tmp: s3.download_file(uri, tmp))
    except ChecksumMismatchError as error:
        raise StepError(
            f'{uri} changed since it was recorded: sha256 {error.got}, manifest says {sha256}'
        ) from error


# --------------------------------------------------------------------------- 1. data prep


def _generator_options(uri: str) -> dict[str, int]:
    """``generate://?num_classes=3&train_per_class=4`` -> generate_dataset kwargs."""
    query = urllib.parse.urlsplit(uri).query
    allowed = ('num_classes', 'train_per_class', 'val_per_class', 'num_frames', 'size', 'seed')
    options = {}
    for key, values in urllib.parse.parse_qs(query).items():
        if key not in allowed:
            raise StepError(
                f'unknown generator option {key!r} in {uri!r}; known: {", ".join(allowed)}'
            )
        try:
            options[key] = int(values[-1])
        except ValueError as exc:
            raise StepError(
                f'generator option {key} must be an integer, got {values[-1]!r}'
            ) from exc
    return options


def data_prep(
    dataset_uri: str,
    bucket: str,
    prefix: str,
    run_id: str = '',
    job_id: str = '',
    workdir: str | Path | None = None,
    min_frames: int = 8,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Validate a dataset and publish the cleaned lists under ``<run>/data/``.

    ``dataset_uri``: an ``s3://`` prefix holding ``videos/<class>/*.mp4``,
    ``train_list.txt``, ``val_list.txt``, ``classes.txt``; or
    ``generate://[?num_classes=..]`` for the built-in synthetic dataset
    (its videos are uploaded under ``<run>/data/videos/``); or a local
    directory.  Videos of an ``s3://`` dataset stay where they are and the
    lists refer to them.  ``out_dir`` receives the cleaned lists and report
    (the KFP Dataset artifact's directory).
    """
    from video_kd import dataset

    layout = s3.RunLayout(bucket, prefix, run_id or new_run_id(job_id))
    claim_run(layout, job_id)
    with scratch_dir(workdir, 'data') as work:
        raw = work / 'raw'
        videos_uri, upload_videos = _gather_dataset(dataset_uri, layout, raw)
        clean = Path(out_dir) if out_dir else work / 'clean'
        try:
            report = dataset.validate_dataset(raw, clean, min_frames=min_frames)
        except dataset.DatasetError as exc:
            raise StepError(f'dataset {dataset_uri}: {exc}') from exc
        (clean / dataset.VIDEO_DIR).unlink(missing_ok=True)  # the symlink: videos live in S3
        report['root'] = dataset_uri  # not this pod's temporary directory
        (clean / 'report.json').write_text(json.dumps(report, indent=2))
        files = {}
        for name in (dataset.TRAIN_LIST, dataset.VAL_LIST, dataset.CLASSES_FILE, 'report.json'):
            files[name] = _entry_meta(_publish(layout, 'data', clean / name, name))
        if upload_videos:
            for rel in _listed_videos(clean):
                _publish(layout, 'data', raw / dataset.VIDEO_DIR / rel, dataset.VIDEO_DIR, rel)
        classes = dataset.read_classes(clean)
        meta = {
            **run_info(layout),
            'data_uri': layout.uri('data'),
            'videos_uri': videos_uri,
            'source': dataset_uri,
            'classes': classes,
            'num_classes': len(classes),
            'num_train': _count_lines(clean / dataset.TRAIN_LIST),
            'num_val': _count_lines(clean / dataset.VAL_LIST),
            'rejected': int(report.get('rejected_total', 0)),
            'files': files,
        }
    meta['dataset_meta_uri'] = publish_data_meta(meta)
    log.info(
        'data: %d train / %d val videos, %d classes, %d rejected -> %s',
        meta['num_train'],
        meta['num_val'],
        len(classes),
        meta['rejected'],
        meta['data_uri'],
    )
    return meta


def _gather_dataset(dataset_uri: str, layout: s3.RunLayout, raw: Path) -> tuple[str, bool]:
    """Put the dataset's lists and videos under ``raw``.

    Returns where the run's videos live and whether they must be uploaded there
    (an s3:// dataset's videos stay where they are).
    """
    from video_kd import dataset

    if dataset_uri.startswith(GENERATED_SCHEME):
        dataset.generate_dataset(raw, **_generator_options(dataset_uri))
        return layout.uri('data', dataset.VIDEO_DIR), True
    if dataset_uri.startswith('s3://'):
        src = dataset_uri.rstrip('/')
        for name in (dataset.TRAIN_LIST, dataset.VAL_LIST, dataset.CLASSES_FILE):
            try:
                s3.download_file(s3.join_uri(src, name), raw / name)
            except s3.ObjectNotFoundError as exc:
                raise StepError(
                    f'dataset {src} has no {name}: expected videos/, '
                    'train_list.txt, val_list.txt and classes.txt there'
                ) from exc
        s3.download_dir(s3.join_uri(src, dataset.VIDEO_DIR), raw / dataset.VIDEO_DIR)
        return s3.join_uri(src, dataset.VIDEO_DIR), False
    if Path(dataset_uri).is_dir():
        shutil.copytree(dataset_uri, raw, symlinks=False)
        return layout.uri('data', dataset.VIDEO_DIR), True
    raise StepError(
        f'dataset_uri {dataset_uri!r}: expected an s3:// prefix, '
        f'{GENERATED_SCHEME} or an existing local directory'
    )


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _listed_videos(clean: Path) -> list[str]:
    from video_kd import dataset

    names = set()
    for list_name in (dataset.TRAIN_LIST, dataset.VAL_LIST):
        for line in (clean / list_name).read_text().splitlines():
            if line.strip():
                names.add(line.rsplit(None, 1)[0])
    return sorted(names)


def fetch_dataset(data_meta: dict[str, Any], root: str | Path) -> Path:
    """Materialise a published dataset locally: lists (verified) + the listed videos."""
    from video_kd import dataset

    root = Path(root)
    for name in (dataset.TRAIN_LIST, dataset.VAL_LIST, dataset.CLASSES_FILE):
        info = data_meta['files'][name]
        fetch_verified(info['s3_uri'], root / name, info['sha256'])
    for rel in _listed_videos(root):
        target = root / dataset.VIDEO_DIR / rel
        if not target.is_file():
            s3.download_file(s3.join_uri(data_meta['videos_uri'], rel), target)
    return root


# --------------------------------------------------------------------------- 2. teacher


def teacher_download(
    run_root: str, url: str, sha256: str = '', workdir: str | Path | None = None
) -> dict[str, Any]:
    """Fetch the teacher (verified, cached by checksum) into ``<run>/teacher/``."""
    from video_kd import download

    if not url:
        raise StepError(
            'teacher_url is empty: give the https:// or s3:// URL of the teacher '
            'checkpoint (and its sha256)'
        )
    layout = layout_from_root(run_root)
    with scratch_dir(workdir, 'teacher') as work:
        cache_uri = (
            layout.cache_uri(download.CACHE_KIND, sha256.strip().lower(), 'x')
            if sha256 and len(sha256.strip()) == 64
            else None
        )
        cache_hit = bool(cache_uri) and bool(s3.list_uris(cache_uri.rsplit('/', 1)[0] + '/'))
        try:
            path = download.fetch_teacher(url, work, sha256=sha256 or None, cache=layout)
        except download.ChecksumMismatchError as exc:
            raise StepError(str(exc)) from exc
        except ValueError as exc:
            raise StepError(f'teacher {url}: {exc}') from exc
        entry = _publish(layout, 'teacher', path, path.name)
        return {
            **run_info(layout),
            **_entry_meta(entry),
            'filename': path.name,
            'source_url': url,
            'cache_hit': cache_hit,
        }


# --------------------------------------------------------------------------- 3. train


def pytorchjob_name(run_id: str) -> str:
    """A DNS-1035 name for the run's PyTorchJob (<= 63 chars)."""
    name = re.sub(r'[^a-z0-9-]+', '-', f'video-kd-{run_id}'.lower()).strip('-')
    return name[:63].rstrip('-')


TEACHER_PRECISIONS = tuple(PRECISIONS)


def check_teacher_precision(precision: str) -> None:
    """'' keeps MMRazor's teacher; otherwise video_kd.fast_teacher in that precision."""
    if precision and precision not in TEACHER_PRECISIONS:
        raise StepError(
            f'teacher_precision {precision!r}: use one of '
            f'{", ".join(TEACHER_PRECISIONS)} or leave it empty (the teacher '
            'as MMRazor runs it)'
        )


def train_pod_command(
    run_root: str,
    data_meta_uri: str,
    teacher_uri: str,
    teacher_sha: str,
    kd_config: str,
    max_epochs: int = 0,
    cfg_options: str = '',
    work_dir: str = '/tmp/video-kd/train',
    teacher_logit_cache: bool = False,
    teacher_precision: str = '',
) -> list[str]:
    """What follows ``torchrun`` in every pod (and locally)."""
    command = [
        '-m',
        'video_kd.steps',
        'train-pod',
        kd_config,
        '--run-root',
        run_root,
        '--data-meta',
        data_meta_uri,
        '--teacher',
        teacher_uri,
        '--teacher-sha256',
        teacher_sha,
        '--work-dir',
        work_dir,
    ]
    if teacher_logit_cache:
        command.append('--teacher-logit-cache')
    if teacher_precision:
        command += ['--teacher-precision', teacher_precision]
    if max_epochs:
        command += ['--max-epochs', str(max_epochs)]
    if cfg_options.strip():
        command += ['--cfg-options', *cfg_options.split()]
    return command


def _namespace() -> str:
    ns_file = Path('/var/run/secrets/kubernetes.io/serviceaccount/namespace')
    if os.environ.get('VIDEO_KD_NAMESPACE'):
        return os.environ['VIDEO_KD_NAMESPACE']
    return ns_file.read_text().strip() if ns_file.is_file() else 'kubeflow'


def build_train_job(
    run_root: str,
    data_meta_uri: str,
    teacher: dict[str, Any],
    kd_config: str,
    image: str,
    num_workers: int,
    gpus_per_worker: int,
    nproc_per_node: int = 1,
    max_epochs: int = 0,
    cfg_options: str = '',
    teacher_logit_cache: bool = False,
    teacher_precision: str = '',
) -> dict[str, Any]:
    """The PyTorchJob manifest of a run's training (validated)."""
    from video_kd import pytorchjob

    layout = layout_from_root(run_root)
    check_teacher_precision(teacher_precision)
    command = train_pod_command(
        run_root,
        data_meta_uri,
        teacher['s3_uri'],
        teacher['sha256'],
        kd_config,
        max_epochs,
        cfg_options,
        teacher_logit_cache=teacher_logit_cache,
        teacher_precision=teacher_precision,
    )
    env = {k: os.environ[k] for k in S3_PLAIN_ENV if os.environ.get(k)}
    env['VIDEO_KD_RUN_ID'] = layout.run_id
    overrides = json.loads(os.environ.get('VIDEO_KD_WORKER_POD_OVERRIDES') or '{}')
    requests = (overrides.get('resources') or {}).get('requests') or {}
    manifest = pytorchjob.build_pytorchjob(
        name=pytorchjob_name(layout.run_id),
        namespace=_namespace(),
        image=image,
        command=command,
        num_workers=num_workers,
        nproc_per_node=nproc_per_node,
        gpus_per_worker=gpus_per_worker,
        cpu=str(requests.get('cpu', '2')),
        memory=str(requests.get('memory', '8Gi')),
        env=env,
        s3_secret_name=os.environ.get('S3_CREDENTIALS_SECRET') or DEFAULT_SECRET,
        service_account=os.environ.get('VIDEO_KD_SERVICE_ACCOUNT') or None,
        node_selector=overrides.get('nodeSelector') or None,
        tolerations=overrides.get('tolerations') or None,
        labels={'app.kubernetes.io/part-of': 'video-kd', 'video-kd/run-id': layout.run_id[:63]},
    )
    pytorchjob.validate_pytorchjob(manifest)
    return manifest


def _data_meta_uri(layout: s3.RunLayout) -> str:
    return layout.uri('data', 'dataset.json')


def publish_data_meta(data_meta: dict[str, Any]) -> str:
    """Store the Dataset artifact's metadata where a pod can read it."""
    layout = layout_from_root(data_meta['run_root'])
    uri = _data_meta_uri(layout)
    if not s3.exists(uri):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / 'dataset.json'
            path.write_text(json.dumps(data_meta, indent=2, sort_keys=True))
            _publish(layout, 'data', path, 'dataset.json')
    return uri


def train(
    data_meta: dict[str, Any],
    teacher: dict[str, Any],
    kd_config: str,
    mode: str = 'local',
    image: str = '',
    num_workers: int = 1,
    gpus_per_worker: int = 0,
    nproc_per_node: int = 1,
    max_epochs: int = 0,
    cfg_options: str = '',
    workdir: str | Path | None = None,
    timeout: float = 7 * 24 * 3600,
    teacher_logit_cache: bool = False,
    teacher_precision: str = '',
) -> dict[str, Any]:
    """Run the KD training as a PyTorchJob (``mode='pytorchjob'``) or under local torchrun.

    Either way the checkpoints are in ``<run>/train/checkpoints/``; returns the
    last one's metadata.  Re-running after a failure resumes from there.
    """
    from video_kd import pytorchjob
    from video_kd.config import load_config
    from video_kd.s3_hook import list_checkpoints

    load_config(kd_config)  # unknown config: fail here, not in a pod
    check_teacher_precision(teacher_precision)
    layout = layout_from_root(data_meta['run_root'])
    meta_uri = publish_data_meta(data_meta)
    if mode == 'pytorchjob':
        manifest = build_train_job(
            layout.root,
            meta_uri,
            teacher,
            kd_config,
            image,
            num_workers,
            gpus_per_worker,
            nproc_per_node,
            max_epochs,
            cfg_options,
            teacher_logit_cache=teacher_logit_cache,
            teacher_precision=teacher_precision,
        )
        try:
            pytorchjob.submit_and_wait(manifest, timeout=timeout)
        except pytorchjob.PyTorchJobFailed as exc:
            raise StepError(str(exc)) from exc
    elif mode == 'local':
        with scratch_dir(workdir, 'train') as work:
            # A fresh work dir per attempt: a resumed run must get its state from S3.
            attempt = Path(tempfile.mkdtemp(prefix='attempt-', dir=work))
            nproc = max(1, num_workers) * max(1, nproc_per_node)
            command = train_pod_command(
                layout.root,
                meta_uri,
                teacher['s3_uri'],
                teacher['sha256'],
                kd_config,
                max_epochs,
                cfg_options,
                str(attempt / 'work'),
                teacher_logit_cache=teacher_logit_cache,
                teacher_precision=teacher_precision,
            )
            code = pytorchjob.run_local(
                command,
                nproc_per_node=nproc,
                env={'VIDEO_KD_RUN_ID': layout.run_id},
                log_path=attempt / 'torchrun.log',
            )
            if code != 0:
                tail = _error_line(attempt / 'torchrun.log')
                raise StepError(
                    f'local training (torchrun, {nproc} processes) failed with exit '
                    f'code {code}: {tail}; re-run the step to resume from the last '
                    f'checkpoint in {layout.uri("train", "checkpoints")}/'
                )
    else:
        raise StepError(f'unknown training mode {mode!r}: use "pytorchjob" or "local"')
    checkpoints = list_checkpoints(layout)
    if not checkpoints:
        raise StepError(f'training finished but no checkpoint is in {layout.uri("train")}/')
    manifest = s3.Manifest.load(layout)
    last = next(e for e in manifest.entries if e.uri == checkpoints[-1])
    return {
        **run_info(layout),
        **_entry_meta(last),
        'checkpoints': checkpoints,
        'kd_config': kd_config,
        'mode': mode,
        'epochs': len(checkpoints),
    }


def _error_line(log_path: Path) -> str:
    """The most telling line of a failed torchrun log."""
    if not log_path.is_file():
        return 'no log'
    lines = [ln.strip() for ln in log_path.read_text(errors='replace').splitlines() if ln.strip()]
    for pattern in ('error: ', 'Error: ', 'Error', 'exitcode'):
        hits = [ln for ln in lines if pattern in ln]
        if hits:
            return hits[-1][-300:]
    return lines[-1][-300:] if lines else 'no output'


def train_pod(argv: list[str] | None = None) -> int:
    """Entry point of every training process (``torchrun -m video_kd.steps train-pod``)."""
    from video_kd import train as train_mod
    from video_kd.runtime import setup_logging, wait_for_file
    from video_kd.s3_hook import latest_checkpoint_uri

    parser = argparse.ArgumentParser(
        prog='python -m video_kd.steps train-pod',
        description='Training entry point of a PyTorchJob pod (and of local mode): fetch the '
        "run's data and teacher from S3, resume from its last checkpoint in S3, "
        'train, upload every checkpoint as it is written.',
    )
    parser.add_argument('config')
    parser.add_argument('--run-root', required=True)
    parser.add_argument('--data-meta', required=True, help='s3:// URI of dataset.json')
    parser.add_argument('--teacher', required=True, help='s3:// URI of the teacher checkpoint')
    parser.add_argument('--teacher-sha256', default='')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--max-epochs', type=int)
    parser.add_argument('--cfg-options', nargs='+', default=[])
    parser.add_argument(
        '--teacher-logit-cache',
        action='store_true',
        help='reuse teacher logits stored next to the dataset '
        '(<dataset>/teacher_logits/, see video_kd.logit_cache)',
    )
    parser.add_argument(
        '--teacher-precision',
        choices=TEACHER_PRECISIONS,
        help='run the teacher as an inference model (video_kd.fast_teacher)',
    )
    args = parser.parse_args(argv)
    setup_logging()
    layout = layout_from_root(args.run_root)
    work = Path(args.work_dir)
    inputs, train_dir = work / 'inputs', work / 'mmengine'
    ready = inputs / '.ready'
    resume = None
    if int(os.environ.get('LOCAL_RANK', '0')) == 0:  # one download per node (pod)
        inputs.mkdir(parents=True, exist_ok=True)
        meta_path = s3.download_file(args.data_meta, inputs / 'dataset.json')
        fetch_dataset(json.loads(meta_path.read_text()), inputs / 'data')
        fetch_verified(args.teacher, inputs / 'teacher.pth', args.teacher_sha256 or None)
        last = latest_checkpoint_uri(layout)
        if last:
            ckpt = s3.download_file(last, train_dir / last.rsplit('/', 1)[-1])
            (train_dir / 'last_checkpoint').write_text(str(ckpt.resolve()))
            log.info('resuming from %s (downloaded from %s)', ckpt.name, last)
        ready.write_text(last or '')
    else:
        wait_for_file(ready)
    resume = ready.read_text() or None
    train_argv = [
        args.config,
        '--work-dir',
        str(train_dir),
        '--teacher-ckpt',
        str(inputs / 'teacher.pth'),
        '--data-root',
        str(inputs / 'data'),
        '--no-data-check',
    ]
    if resume:
        train_argv.append('--resume')
    if args.max_epochs:
        train_argv += ['--max-epochs', str(args.max_epochs)]
    if args.cfg_options:
        train_argv += ['--cfg-options', *args.cfg_options]
    if args.teacher_precision:
        train_argv += ['--teacher-precision', args.teacher_precision]
    if args.teacher_logit_cache:  # next to the dataset's videos: shared by its retrainings
        videos_uri = json.loads((inputs / 'dataset.json').read_text())['videos_uri']
        train_argv += ['--teacher-logit-cache', videos_uri.rstrip('/').rsplit('/', 1)[0]]
    cfg = train_mod.build_config(train_mod.parse_args(train_argv))
    hooks = list(cfg.get('custom_hooks') or [])
    hooks.append(dict(type='S3CheckpointHook', run_root=layout.root, priority='LOWEST'))
    cfg.custom_hooks = hooks
    import video_kd.s3_hook  # noqa: F401  (registers S3CheckpointHook)

    runner = train_mod.train(cfg)
    if train_mod.is_main_process():
        log.info('done: checkpoints in %s/', s3.join_uri(layout.uri('train'), 'checkpoints'))
    del runner
    return 0


# --------------------------------------------------------------------------- 4. convert


def convert(kd_model: dict[str, Any], workdir: str | Path | None = None) -> dict[str, Any]:
    """KD checkpoint -> student-only checkpoint in ``<run>/student/``."""
    from video_kd.convert import convert_kd_ckpt_to_student

    layout = layout_from_root(kd_model['run_root'])
    with scratch_dir(workdir, 'convert') as work:
        name = kd_model['s3_uri'].rsplit('/', 1)[-1]
        kd_path = fetch_verified(kd_model['s3_uri'], work / name, kd_model.get('sha256'))
        student = convert_kd_ckpt_to_student(kd_path, overwrite=True)
        entry = _publish(layout, 'student', student, student.name)
        return {
            **run_info(layout),
            **_entry_meta(entry),
            'converted_from': kd_model['s3_uri'],
            'kd_config': kd_model.get('kd_config', ''),
        }


# --------------------------------------------------------------------------- 5. evaluate


def _teacher_config_file(kd_config: str, out_dir: Path) -> str:
    """A plain recognizer config of the KD config's teacher (to evaluate it alone)."""
    from video_kd.config import load_config

    cfg = load_config(kd_config)
    cfg.model = cfg.model.teacher
    path = out_dir / 'teacher_config.py'
    cfg.dump(str(path))
    return str(path)


def evaluate(
    data_meta: dict[str, Any],
    student: dict[str, Any],
    kd_config: str,
    teacher: dict[str, Any] | None = None,
    student_config: str = '',
    baseline_url: str = '',
    baseline_sha256: str = '',
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate student (+ teacher, + the student-alone baseline when given).

    Writes ``<run>/eval/metrics.json`` and ``report.md``; returns the metrics.
    """
    layout = layout_from_root(student['run_root'])
    with scratch_dir(workdir, 'eval') as work:
        results = _evaluate_models(
            work,
            layout,
            data_meta,
            student,
            kd_config,
            teacher,
            student_config,
            baseline_url,
            baseline_sha256,
        )
        summary = summarise_metrics(layout.run_id, results)
        report = markdown_report(summary, student, teacher, baseline_url)
        (work / 'metrics.json').write_text(json.dumps(summary, indent=2))
        (work / 'report.md').write_text(report)
        metrics_entry = _publish(layout, 'eval', work / 'metrics.json', 'metrics.json')
        _publish(layout, 'eval', work / 'report.md', 'report.md')
    return {
        **run_info(layout),
        'metrics': summary,
        'report': report,
        'metrics_uri': metrics_entry.uri,
    }


def _evaluate_models(
    work: Path,
    layout: s3.RunLayout,
    data_meta: dict[str, Any],
    student: dict[str, Any],
    kd_config: str,
    teacher: dict[str, Any] | None,
    student_config: str,
    baseline_url: str,
    baseline_sha256: str,
) -> dict[str, dict[str, Any]]:
    """MMAction2's test loop on the val list, per model: student, teacher, baseline."""
    from video_kd import download
    from video_kd import evaluate as ev

    data_root = fetch_dataset(data_meta, work / 'data')
    results: dict[str, dict[str, Any]] = {}

    def run(name: str, config: str, ckpt: Path) -> None:
        results[name] = ev.evaluate(config, str(ckpt), str(data_root), str(work / f'w_{name}'))
        log.info(
            '%s: top-1 %.4f top-5 %.4f mean-class %.4f',
            name,
            results[name]['top1_acc'],
            results[name]['top5_acc'],
            results[name]['mean_class_acc'],
        )

    run(
        'student',
        kd_config,
        fetch_verified(student['s3_uri'], work / 'student.pth', student.get('sha256')),
    )
    if teacher:
        run(
            'teacher',
            _teacher_config_file(kd_config, work),
            fetch_verified(teacher['s3_uri'], work / 'teacher.pth', teacher.get('sha256')),
        )
    if baseline_url:
        if not student_config:
            raise StepError(
                'baseline_url is given but student_config is empty: the baseline '
                'is evaluated with the student-alone config'
            )
        try:
            baseline = download.fetch_teacher(
                baseline_url, work / 'baseline', sha256=baseline_sha256 or None, cache=layout
            )
        except download.ChecksumMismatchError as exc:
            raise StepError(str(exc)) from exc
        run('baseline', student_config, baseline)
    return results


ACCURACY_KEYS = ('top1_acc', 'top5_acc', 'mean_class_acc')


def summarise_metrics(run_id: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """metrics.json: the student's accuracies and confusion matrix, the others' accuracies
    and, with a baseline, the KD gain (student minus student alone)."""
    summary = {
        'run_id': run_id,
        'num_val': results['student']['num_samples'],
        'classes': results['student']['classes'],
        'student': {k: results['student'][k] for k in ACCURACY_KEYS},
        'confusion_matrix': results['student']['confusion_matrix'],
    }
    for name in ('teacher', 'baseline'):
        if name in results:
            summary[name] = {k: results[name][k] for k in ACCURACY_KEYS}
    if 'baseline' in results:
        summary['kd_gain'] = {
            k: summary['student'][k] - summary['baseline'][k] for k in ACCURACY_KEYS
        }
    return summary


def markdown_report(
    summary: dict[str, Any],
    student: dict[str, Any],
    teacher: dict[str, Any] | None,
    baseline_url: str,
) -> str:
    rows = [('student (KD)', summary['student'])]
    if 'teacher' in summary:
        rows.append(('teacher', summary['teacher']))
    if 'baseline' in summary:
        rows.append(('student alone (no KD)', summary['baseline']))
    lines = [
        f'# Knowledge distillation: run `{summary["run_id"]}`',
        '',
        f'Validation set: {summary["num_val"]} videos, {len(summary["classes"])} classes.',
        '',
        '| model | top-1 | top-5 | mean-class acc |',
        '|---|---|---|---|',
    ]
    lines += [
        f'| {name} | {m["top1_acc"]:.4f} | {m["top5_acc"]:.4f} | {m["mean_class_acc"]:.4f} |'
        for name, m in rows
    ]
    if 'kd_gain' in summary:
        gain = summary['kd_gain']
        lines += [
            '',
            f'**KD gain** (student with KD minus without): top-1 '
            f'{gain["top1_acc"]:+.4f}, mean-class {gain["mean_class_acc"]:+.4f}.',
        ]
    lines += ['', f'Student checkpoint: `{student["s3_uri"]}`']
    if teacher:
        lines.append(f'Teacher checkpoint: `{teacher["s3_uri"]}`')
    if baseline_url:
        lines.append(f'Baseline checkpoint: `{baseline_url}`')
    lines += [
        '',
        '## Confusion matrix (student)',
        '',
        '| true \\ predicted | ' + ' | '.join(summary['classes']) + ' |',
        '|---' * (len(summary['classes']) + 1) + '|',
    ]
    for name, row in zip(summary['classes'], summary['confusion_matrix'], strict=False):
        lines.append(f'| {name} | ' + ' | '.join(str(int(v)) for v in row) + ' |')
    return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------- standalone inputs


def run_data_meta(run_root: str) -> dict[str, Any]:
    """The Dataset metadata data prep stored in ``<run>/data/dataset.json``."""
    uri = _data_meta_uri(layout_from_root(run_root))
    try:
        return load_meta(uri)
    except s3.ObjectNotFoundError as exc:
        raise StepError(f'{uri} does not exist: run data prep for this run first') from exc


def run_step_output(run_root: str, step: str, suffix: str = '.pth') -> dict[str, Any]:
    """The last object ``step`` recorded in the run's manifest (e.g. its checkpoint)."""
    layout = layout_from_root(run_root)
    entries = [
        e for e in s3.Manifest.load(layout).entries if e.step == step and e.uri.endswith(suffix)
    ]
    if step == 'train':
        from video_kd.s3_hook import checkpoint_sort_key

        entries = sorted(
            (e for e in entries if checkpoint_sort_key(e.uri)),
            key=lambda e: checkpoint_sort_key(e.uri),
        )
    if not entries:
        raise StepError(
            f'the manifest of {layout.root} has no {step} output ({suffix}): '
            f'run the {step} step for this run first'
        )
    return {**run_info(layout), **_entry_meta(entries[-1])}


# --------------------------------------------------------------------------- CLI glue


def run_step(fn, *args, **kwargs):
    """Call a step; expected failures become one ``error: ...`` line and exit code 2."""
    from video_kd import download
    from video_kd.config import UnknownConfigError
    from video_kd.runtime import UsageError

    try:
        return fn(*args, **kwargs)
    except (
        StepError,
        s3.S3Error,
        download.DownloadError,
        UsageError,
        UnknownConfigError,
        FileNotFoundError,
    ) as exc:
        print(f'error: {exc}', file=sys.stderr)
        raise SystemExit(2) from exc


def load_meta(value: str) -> dict[str, Any]:
    """Artifact metadata given on a command line: JSON text, a JSON file or an s3:// URI."""
    if value.startswith('s3://'):
        bucket, key = s3.parse_s3_uri(value)
        return json.loads(s3.s3_client().get_object(Bucket=bucket, Key=key)['Body'].read())
    if Path(value).is_file():
        return json.loads(Path(value).read_text())
    return json.loads(value)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['train-pod']:
        from video_kd.runtime import run_cli

        return run_cli(train_pod, argv[1:])
    print(
        'usage: python -m video_kd.steps train-pod CONFIG --run-root ... '
        '(the PyTorchJob entry point; the other steps: python -m components.<step>)',
        file=sys.stderr,
    )
    return 2


if __name__ == '__main__':
    raise SystemExit(main())
