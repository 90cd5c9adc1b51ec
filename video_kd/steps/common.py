"""What the steps share: a scratch directory, verified fetches, and the inputs of a step run alone."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing.util
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from video_kd.core.artifacts import Dataset
from video_kd.core.errors import UserError
from video_kd.runs import Manifest, RunLayout, run_info
from video_kd.storage import s3

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def step_tmpdir(work: Path) -> Iterator[Path]:
    """Temporary files of the step's own processes inside ``work/tmp``, removed at the end.

    PyTorch's DataLoader workers are forked; a worker that needs multiprocessing's temp
    directory (a ``pymp-*`` for the sockets that pass tensors' file descriptors) makes its
    own when this process has none, and a worker ended by the loader's shutdown never
    removes it: evaluation left one per worker in TMPDIR.  So this process's is made first
    (forked workers share it; it is removed when this process exits), and TMPDIR points
    into ``work`` for whatever else the step's processes create.
    """
    multiprocessing.util.get_temp_dir()  # before the redirect: not inside work/tmp
    tmp = work / 'tmp'
    tmp.mkdir(parents=True, exist_ok=True)
    before_env, before_module = os.environ.get('TMPDIR'), tempfile.tempdir
    os.environ['TMPDIR'] = tempfile.tempdir = str(tmp)
    try:
        yield tmp
    finally:
        tempfile.tempdir = before_module
        if before_env is None:
            os.environ.pop('TMPDIR', None)
        else:
            os.environ['TMPDIR'] = before_env
        shutil.rmtree(tmp, ignore_errors=True)


def load_meta(value: str) -> dict[str, Any]:
    """Artifact metadata given on a command line: JSON text, a JSON file or an s3:// URI."""
    if value.startswith('s3://'):
        return s3.read_json(value)
    if Path(value).is_file():
        return json.loads(Path(value).read_text())
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise UserError(f'{value[:80]!r} is neither an s3:// URI, a JSON file nor JSON') from exc


# --------------------------------------------------------------------------- a step run alone


def read_output(uri: str, producer: str) -> Any:
    """A JSON object an earlier step wrote (its record, ``video_kd.core.artifacts``); a missing one is one line naming that step."""
    try:
        return s3.read_json(uri)
    except s3.BucketNotFoundError:
        raise
    except s3.ObjectNotFoundError as exc:
        raise UserError(f'{uri} does not exist: run {producer} for this run first') from exc


def output_uri(layout: RunLayout, step: str) -> str:
    """Where a finished step records its output metadata: ``<run>/<step>/<step>.json``."""
    return layout.uri(step, f'{step}.json')


def record_output(layout: RunLayout, step: str, meta: Mapping[str, Any]) -> None:
    """Publish a finished step's output metadata (what its artifact carries) to the run,
    for the later steps run alone and for the model card.  A re-run of a finished step
    redoes nothing the record describes, so the first record is kept, never overwritten."""
    uri = output_uri(layout, step)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / uri.rsplit('/', 1)[1]
        path.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        try:
            Manifest.load(layout).publish(step, path, uri)
        except s3.ObjectExistsError:
            log.info('%s records an earlier finish of this step: kept', uri)


def run_data_meta(run_root: str) -> Dataset:
    """The Dataset metadata data prep stored in ``<run>/data/dataset.json``."""
    return read_output(RunLayout.from_root(run_root).dataset_meta_uri, 'data prep')


def run_step_output(run_root: str, step: str, suffix: str = '.pth') -> dict[str, Any]:
    """The last object ``step`` recorded in the run's manifest (e.g. its checkpoint)."""
    layout = RunLayout.from_root(run_root)
    entries = [
        e for e in Manifest.load(layout).entries if e.step == step and e.uri.endswith(suffix)
    ]
    if step == 'train':
        # deferred: s3_hook imports mmengine's hooks (torch, 2 s), which the steps that
        # only read records (check inputs, data prep, promote) never need
        from video_kd.distill.s3_hook import checkpoint_sort_key

        keyed = [(key, e) for e in entries if (key := checkpoint_sort_key(e.uri))]
        entries = [e for _, e in sorted(keyed, key=lambda pair: pair[0])]
    if not entries:
        raise UserError(
            f'the manifest of {layout.root} has no {step} output ({suffix}): '
            f'run the {step} step for this run first'
        )
    last = entries[-1].meta()
    record = _recorded_output(layout, step)
    if record.get('s3_uri') != last['s3_uri']:
        record = {}  # a record of another object (an older step version): not this one's
    return {**record, **run_info(layout), **last}


def _recorded_output(layout: RunLayout, step: str) -> dict[str, Any]:
    """What the step recorded about its output (``record_output``); {} if nothing."""
    try:
        return s3.read_json(output_uri(layout, step))
    except s3.BucketNotFoundError:
        raise
    except s3.ObjectNotFoundError:
        return {}
