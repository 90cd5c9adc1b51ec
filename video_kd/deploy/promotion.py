"""The promotion gate: which student is a model's current one, and the decisions that made it.

A model name (``model_name``; by default derived from the KD config's student) owns,
beside the runs under the same prefix::

    s3://<bucket>/<prefix>/models/<model name>/current.json          the current student
    s3://<bucket>/<prefix>/models/<model name>/history/<time>-<run id>.json   every decision
    s3://<bucket>/<prefix>/models/<model name>/history/<time>-<run id>.replaced.json

``current.json`` (``CurrentStudent``) names the run, the student ``.pth`` and the ONNX
file with their sha256, the metrics, the val list (sha256) it was scored on and the
class list's sha256.  The evaluate step scores it on the new run's val set beside the new
student (``read_current`` + ``comparable``); the promote step then decides (``decide``)
and, to promote, replaces ``current.json`` with a compare-and-swap on the ETag the
evaluation read (``commit``): two runs finishing together never both win (the second
write finds another ETag and records that it lost), and a run evaluated against an older
current student cannot replace a newer one.  History objects are written create-if-absent
under names no other run uses, and the replaced ``current.json`` is kept byte for byte
beside its decision, so nothing of the history is lost.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from video_kd.core.artifacts import Accuracy
from video_kd.core.checks import check_number
from video_kd.core.errors import UserError
from video_kd.runs import MODELS_DIR  # under the runs' prefix; never a run id
from video_kd.storage import s3

CURRENT_NAME = 'current.json'
HISTORY_DIR = 'history'
SCHEMA = 'video-kd/current-student/v1'
MODEL_NAME_PATTERN = re.compile(r'^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?\Z')
MODEL_NAME_RULE = (
    'a model name is 1-63 lowercase letters, digits, ".", "_" and "-", starting and '
    'ending with a letter or digit'
)
_SHA256 = re.compile(r'^[0-9a-f]{64}\Z')
_KD_CONFIG_NAME = re.compile(r'^kd_[^_]+_[^_]+_(?P<student>[^_]+)_(?P<rest>.+)\Z')


class StoredFile(TypedDict):
    s3_uri: str
    sha256: str


class CurrentStudent(TypedDict):
    """``models/<name>/current.json``."""

    schema: str
    model_name: str
    run_id: str
    run_root: str
    promoted_at: str  # UTC, ISO 8601
    kd_config: str  # the config the student is scored with
    student: StoredFile  # the plain MMAction2 checkpoint
    onnx: StoredFile
    metrics: Accuracy  # on the val set below, when it was promoted
    val_list_sha256: str
    num_val: int
    classes_sha256: str
    num_classes: int


class CurrentProblem(UserError):
    """``current.json`` cannot be compared with: corrupt, foreign, another class list, ..."""


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.match(name):
        raise UserError(f'bad model name {name!r}: {MODEL_NAME_RULE}')
    return name


def check_min_gain(min_gain_points: float) -> float:
    """``promote_min_gain``: percentage points of top-1, finite, from -100 to 100."""
    return check_number('promote_min_gain', min_gain_points, minimum=-100.0, maximum=100.0)


def default_model_name(kd_config: str) -> str:
    """The KD config's student and setting: ``kd_logits_tsm-res50_tsm-mobilenetv2_tiny`` ->
    ``tsm-mobilenetv2_tiny``; a config named otherwise: its own name."""
    stem = Path(kd_config).stem.lower()
    found = _KD_CONFIG_NAME.match(stem)
    name = f'{found["student"]}_{found["rest"]}' if found else stem
    return check_model_name(re.sub(r'[^a-z0-9._-]+', '-', name).strip('._-')[:63] or 'model')


def resolve_model_name(model_name: str, kd_config: str) -> str:
    """``model_name`` when given (checked), else ``default_model_name(kd_config)``."""
    return check_model_name(model_name) if model_name else default_model_name(kd_config)


def classes_sha256(classes: list[str]) -> str:
    """What identifies a class list (its order is the logits' order)."""
    return hashlib.sha256('\n'.join(classes).encode()).hexdigest()


# --------------------------------------------------------------------------- where


@dataclass(frozen=True)
class ModelPlace:
    """Where one model name's current student and history are."""

    bucket: str
    prefix: str
    name: str

    def __post_init__(self) -> None:
        check_model_name(self.name)

    @property
    def root(self) -> str:
        return s3.join_uri(f's3://{self.bucket}', self.prefix, MODELS_DIR, self.name)

    @property
    def current_uri(self) -> str:
        return s3.join_uri(self.root, CURRENT_NAME)

    @property
    def history_prefix(self) -> str:
        return s3.join_uri(self.root, HISTORY_DIR) + '/'

    def history_uri(self, stamp: str, run_id: str, suffix: str = '.json') -> str:
        return s3.join_uri(self.root, HISTORY_DIR, f'{stamp}-{run_id}{suffix}')


# --------------------------------------------------------------------------- reading


@dataclass
class CurrentState:
    """``current.json`` as read: its record when usable, its ETag (None: absent) and, when
    it cannot be compared with, why (one line)."""

    place: ModelPlace
    record: CurrentStudent | None = None
    etag: str | None = None
    problem: str = ''

    @property
    def exists(self) -> bool:
        return self.etag is not None


def read_current(place: ModelPlace) -> CurrentState:
    """The current student of ``place``; a corrupt or foreign one is a ``problem``, not an
    error: the run goes on, and promotes only when forced."""
    try:
        body, etag = s3.read_versioned(place.current_uri)
    except s3.BucketNotFoundError:
        raise
    except s3.ObjectNotFoundError:
        return CurrentState(place)
    state = CurrentState(place, etag=etag or '')
    try:
        state.record = parse_current(body, place.name)
    except CurrentProblem as exc:
        state.problem = f'{place.current_uri}: {exc}'
    return state


def parse_current(body: bytes, model_name: str) -> CurrentStudent:
    """``current.json``'s record, checked; else ``CurrentProblem`` saying what is wrong."""
    try:
        record = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CurrentProblem(f'not JSON ({exc})') from None
    if not isinstance(record, dict) or record.get('schema') != SCHEMA:
        raise CurrentProblem(f'not a current-student record (schema {SCHEMA!r} expected)')
    if record.get('model_name') != model_name:
        raise CurrentProblem(f'names model {record.get("model_name")!r}, not {model_name!r}')
    for key, kind in CurrentStudent.__annotations__.items():
        if key not in record:
            raise CurrentProblem(f'has no {key!r}')
        if kind in ('str', 'int') and not isinstance(record[key], str if kind == 'str' else int):
            raise CurrentProblem(f'{key!r} is not a {kind}')
    for key in ('student', 'onnx'):
        stored = record[key]
        if not isinstance(stored, dict) or not str(stored.get('s3_uri', '')).startswith('s3://'):
            raise CurrentProblem(f'{key!r} has no s3:// URI')
        if not _SHA256.match(str(stored.get('sha256', ''))):
            raise CurrentProblem(f'{key!r} has no valid sha256')
    for key in ('val_list_sha256', 'classes_sha256'):
        if not _SHA256.match(record[key]):
            raise CurrentProblem(f'{key!r} is not a sha256')
    if not isinstance(record['metrics'], dict) or not isinstance(
        record['metrics'].get('top1_acc'), int | float
    ):
        raise CurrentProblem("'metrics' has no top1_acc")
    return record  # type: ignore[return-value]


def comparable(state: CurrentState, classes: list[str]) -> str:
    """Why the current student cannot be scored beside a student of ``classes`` ('' if it
    can): a problem with its record, or another class list (its logits mean other things)."""
    if state.problem or state.record is None:
        return state.problem
    if state.record['classes_sha256'] != classes_sha256(classes):
        return (
            f'the current student of {state.place.name!r} (run {state.record["run_id"]}) has '
            f'another class list ({state.record["num_classes"]} classes, sha256 '
            f'{state.record["classes_sha256"][:12]}...) than this run ({len(classes)} classes): '
            'not compared'
        )
    return ''


# --------------------------------------------------------------------------- deciding


@dataclass
class Decision:
    """What the gate decided, and why (each reason one line)."""

    model_name: str
    run_id: str
    eligible: bool  # what the gate allows
    promoted: bool = False  # what happened (after ``promote`` and the compare-and-swap)
    reasons: list[str] = field(default_factory=list)
    new_top1: float = 0.0
    current_top1: float | None = None
    current_run_id: str = ''
    gain_points: float | None = None
    min_gain_points: float = 0.0
    forced: bool = False
    report_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def decide(
    model_name: str,
    run_id: str,
    new_top1: float,
    current: CurrentState,
    current_scores: Accuracy | None,
    current_problem: str,
    export_problems: list[str],
    min_gain_points: float,
    force: bool = False,
) -> Decision:
    """The gate: every export check passed, and the new top-1 beats the current student's on
    the same val set by ``min_gain_points`` (percentage points); no current student: promote.
    ``force`` overrides what concerns the current student (its record unusable, another
    class list, too small a gain), never a failed export check."""
    decision = Decision(model_name, run_id, eligible=False, new_top1=new_top1,
                        min_gain_points=min_gain_points, forced=force)  # fmt: skip
    decision.reasons += [f'export check failed: {problem}' for problem in export_problems]
    record = current.record
    if record:
        decision.current_run_id = record['run_id']
    if not current.exists:
        decision.reasons.append(f'no current student of {model_name!r}: the first run promotes')
        current_ok = True
    elif current_problem:
        decision.reasons.append(current_problem)
        current_ok = False
    elif current_scores is None:
        decision.reasons.append('the current student was not scored in this evaluation')
        current_ok = False
    else:
        decision.current_top1 = current_scores['top1_acc']
        decision.gain_points = 100.0 * (new_top1 - current_scores['top1_acc'])
        current_ok = decision.gain_points >= min_gain_points
        verdict = 'beats' if current_ok else 'does not beat'
        decision.reasons.append(
            f"top-1 {100 * new_top1:.2f}% vs the current student's (run "
            f'{decision.current_run_id}) {100 * current_scores["top1_acc"]:.2f}% on the same '
            f'val set: {decision.gain_points:+.2f} points, {verdict} the required '
            f'+{min_gain_points:g}'
        )
    if not current_ok and force:
        decision.reasons.append('force_promote: promoted despite the above')
    decision.eligible = not export_problems and (current_ok or force)
    return decision


# --------------------------------------------------------------------------- committing


def utc_stamp() -> str:
    return time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())


def commit(
    decision: Decision,
    current: CurrentState,
    new_record: CurrentStudent | None,
    promote: bool,
) -> Decision:
    """Record ``decision`` in the history and, when eligible and ``promote``, make
    ``new_record`` current: a compare-and-swap on the ETag ``current`` was read with (or
    create-if-absent), so a run that lost a race, or was evaluated against a student that
    is no longer current, records that it lost and promotes nothing."""
    place = current.place
    stamp = utc_stamp()
    decision.report_only = not promote
    if decision.eligible and not promote:
        decision.reasons.append('promote=false: reported only, nothing promoted')
    if decision.eligible and promote and new_record is not None:
        if current.exists:  # the replaced record, byte for byte, before it is replaced
            _archive_replaced(place, stamp, decision.run_id, current)
        try:
            s3.put_bytes(
                place.current_uri,
                json.dumps(new_record, indent=2, sort_keys=True).encode(),
                content_type='application/json',
                if_match=current.etag if current.exists else None,
                if_absent=not current.exists,
            )
            decision.promoted = True
        except s3.ObjectChangedError:
            decision.reasons.append(
                f'{place.current_uri} changed since this run evaluated it (another run was '
                'promoted meanwhile): not promoted; re-run to compare with the new one'
            )
    _add_history(
        place,
        stamp,
        decision.run_id,
        '.json',
        json.dumps({**decision.to_json(), 'decided_at': stamp}, indent=2).encode(),
    )
    return decision


def _archive_replaced(place: ModelPlace, stamp: str, run_id: str, current: CurrentState) -> None:
    body, etag = s3.read_versioned(place.current_uri)
    if etag != current.etag:
        return  # changed already: the swap below fails and nothing is replaced
    _add_history(place, stamp, run_id, '.replaced.json', body)


def _add_history(place: ModelPlace, stamp: str, run_id: str, suffix: str, body: bytes) -> str:
    """A new history object, never over an earlier one (a retry in the same second of the
    same run gets the next free name)."""
    for attempt in range(1, 100):
        uri = place.history_uri(stamp, run_id if attempt == 1 else f'{run_id}.{attempt}', suffix)
        if s3.create_if_absent(uri, body, 'application/json'):
            return uri
    raise UserError(f'{place.history_prefix}: no free history name for run {run_id}')


def history(place: ModelPlace) -> list[str]:
    """The history objects of a model, oldest first."""
    return sorted(s3.list_uris(place.history_prefix))


def decision_markdown(decision: Decision, current_uri: str) -> str:
    """The decision as the KFP UI, the model card and the report show it."""
    if decision.promoted:
        verdict = f'**promoted**: now the current student of `{decision.model_name}`'
    elif decision.report_only and decision.eligible:
        verdict = '**would be promoted** (promote=false: reported only)'
    else:
        verdict = f'**not promoted**: `{decision.model_name}` keeps its current student'
    lines = [
        f'## Promotion: {verdict}',
        '',
        f'Run `{decision.run_id}`, student top-1 {100 * decision.new_top1:.2f}%; '
        f'required gain over the current student: +{decision.min_gain_points:g} points. '
        f'Current student: `{current_uri}`.',
        '',
    ]
    lines += [f'- {reason}' for reason in decision.reasons]
    return '\n'.join(lines) + '\n'


def kfp_metrics(decision: Decision) -> dict[str, float]:
    """What the KFP UI's Metrics show of the decision; the current student's top-1 and the
    gain only when they were compared (KFP's metadata cannot hold NaN)."""
    metrics = {
        'promoted': float(decision.promoted),
        'eligible': float(decision.eligible),
        'new_top1_acc': decision.new_top1,
        'min_gain_points': decision.min_gain_points,
    }
    if decision.current_top1 is not None and decision.gain_points is not None:
        metrics['current_top1_acc'] = decision.current_top1
        metrics['gain_points'] = decision.gain_points
    return metrics
