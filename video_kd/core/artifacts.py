"""What each step hands the next: one typed record per step output.

A step's ``run(...)`` returns its record; the KFP component stores it as its
output artifact's metadata and the step (or data prep's ``dataset.json``)
stores it in the run as JSON.  The records are TypedDicts, so the values
stay plain dicts: KFP's metadata and the JSON in S3 are what they were, and a
type checker sees which keys a step writes and the next one reads.

=================  ======================================  ==================================
record             written by                              stored in the run
=================  ======================================  ==================================
``Dataset``        data prep (``steps.data_prep``)         ``data/dataset.json``
``Teacher``        teacher download (``steps.teacher``)    ``teacher/teacher.json``
``KDModel``        training (``steps.train``)              ``train/train.json``
``Student``        conversion (``steps.convert``)          (its manifest entry)
``Evaluation``     evaluation (``steps.evaluate``)         ``eval/metrics.json`` (``metrics``)
``Export``         export (``steps.export``)               ``export/export.json``
=================  ======================================  ==================================

A step run alone reads the earlier steps' outputs back from the run
(``steps.common.run_step_output``): there only ``RunInfo`` and the manifest
entry (``StoredObject``) are certain, which is why a record's other keys are
optional and read with ``.get``.  KFP stores every number of an artifact's
metadata as a float: a reader that needs an int converts it
(``int(dataset['num_classes'])``).

Only the standard library here: every layer may import it.
"""

from __future__ import annotations

from typing import Any, TypedDict

# --------------------------------------------------------------------------- shared parts


class RunInfo(TypedDict):
    """What every record carries about its run (``runs.run_info``)."""

    run_id: str
    run_root: str
    manifest_uri: str


class _StoredObject(TypedDict):
    s3_uri: str
    sha256: str
    size_bytes: int


class StoredObject(_StoredObject, total=False):
    """One object of the run as its manifest records it (``runs.ManifestEntry.meta``)."""

    source_sha256: str  # what it was made from, when not in the run (a converted teacher)


# --------------------------------------------------------------------------- data prep


class DatasetSplit(TypedDict):
    """One split of a prepared dataset: where its clean list and its videos are."""

    list_uri: str  # the cleaned list, in the run's data/ (s3:// or a mounted path)
    videos_uri: str  # the video root the list's paths are relative to, where they are
    num_videos: int  # usable videos listed
    rejected: int  # entries left out as unusable


class DatasetContents(TypedDict):
    """What the data loaders need of a prepared dataset, and its counts
    (``data.data_check.dataset_meta``)."""

    source: str
    layout: str  # ours or MMAction2's Kinetics tree (``data.data_layout``)
    classes: list[str]
    num_classes: int
    splits: dict[str, DatasetSplit]  # 'train', 'val'
    classes_uri: str
    report_uri: str
    num_train: int
    num_val: int
    rejected: int
    videos_uri: str  # the train split's: what the teacher-logit cache is keyed on


class Reencoded(TypedDict):
    """The re-encoded copy the run trains on (``data.reencode.reencode_dataset``'s summary)."""

    uri: str
    hash: str
    videos_uri: str
    settings: dict[str, Any]
    num_videos: int


class _Dataset(RunInfo, DatasetContents):
    data_uri: str  # the run's data/ directory
    dataset_meta_uri: str  # <run>/data/dataset.json: this record
    files: dict[str, StoredObject]  # the cleaned lists, classes.txt and report.json


class Dataset(_Dataset, total=False):
    """The Dataset artifact: data prep's output (``source`` is the ``dataset_uri`` given)."""

    reencoded: Reencoded  # with reencode=True


def dataset_split(dataset: DatasetContents, split: str) -> DatasetSplit:
    """The record of ``split`` ('train' or 'val') of a prepared dataset."""
    return dataset['splits'][split]


def split_videos_uri(dataset: DatasetContents, split: str) -> str:
    """Where ``split``'s videos are read (s3:// or a mounted path)."""
    return dataset_split(dataset, split)['videos_uri']


def split_list_uri(dataset: DatasetContents, split: str) -> str:
    """Where ``split``'s cleaned list is."""
    return dataset_split(dataset, split)['list_uri']


# --------------------------------------------------------------------------- teacher


class _Checkpoint(RunInfo, StoredObject):
    pass


class TeacherCheck(TypedDict, total=False):
    """What the check of a teacher checkpoint against a KD config found
    (``distill.teacher_checkpoint.convert_teacher_checkpoint``)."""

    layout: str  # native, mmpretrain, timm-0.6, timm>=0.9
    converted: bool  # to the mmpretrain names the config builds
    source_sha256: str  # the file fetched
    converted_sha256: str  # the file published (the source's when nothing was converted)


class Teacher(_Checkpoint, TeacherCheck, total=False):
    """The teacher artifact: the checkpoint the teacher step published in ``teacher/``
    (with a KD config, what its check found: ``TeacherCheck``)."""

    filename: str
    source_url: str  # where it was fetched from
    cache_hit: bool  # found in the run store's cache by its sha256


# --------------------------------------------------------------------------- training


class KDModel(_Checkpoint, total=False):
    """The KD model artifact: the training's last checkpoint (``train/checkpoints/``)."""

    checkpoints: list[str]  # every checkpoint's URI, in training order
    kd_config: str
    config_uri: str  # the resolved training config, <run>/train/config.py
    backend: str  # pytorchjob, trainjob or local
    job_name: str
    epochs: int
    parameters: dict[str, Any]  # the step's parameters, for the model card


# --------------------------------------------------------------------------- conversion


class Student(_Checkpoint, total=False):
    """The student artifact: the student-only checkpoint in ``student/``."""

    converted_from: str  # the KD checkpoint's URI
    kd_config: str


# --------------------------------------------------------------------------- evaluation


class Accuracy(TypedDict):
    """A model's accuracies on the val split."""

    top1_acc: float
    top5_acc: float
    mean_class_acc: float


class _ModelScores(Accuracy):
    config: str
    test_pipeline: list[str]  # ``Type(key=value, ...)`` per transform
    config_hash: str  # ``distill.evaluate.test_config_hash``: part of the score cache's key
    predictions: list[dict]  # per sample, in sample order: index, label, top5, score
    checkpoint: str
    num_samples: int
    classes: list[str]
    confusion_matrix: list[list[float]]


class ModelScores(_ModelScores, total=False):
    """One model's test loop (``distill.evaluate.evaluate``)."""

    scored_with: str  # the config metrics.json names (the teacher's: its own)


class ScoredWith(TypedDict):
    """Which config and test views scored a model."""

    config: str
    test_pipeline: list[str]


class CurrentScored(TypedDict):
    """The model's current student as the evaluation found it (``deploy.promotion``)."""

    model_name: str
    uri: str  # its current.json
    etag: str | None  # what the promotion's compare-and-swap expects; None: none yet
    run_id: str  # the run it came from ('' when unusable)
    problem: str  # why it was not scored ('' when it was, or when there is none)


class _MetricsSummary(TypedDict):
    run_id: str
    num_val: int
    classes: list[str]
    student: Accuracy
    confusion_matrix: list[list[float]]  # the student's
    scored_with: dict[str, ScoredWith]  # by model: student, teacher, baseline


class MetricsSummary(_MetricsSummary, total=False):
    """``<run>/eval/metrics.json`` (``steps.report.summarise_metrics``)."""

    teacher: Accuracy
    baseline: Accuracy  # the student trained alone, when given
    kd_gain: Accuracy  # student minus baseline
    per_class_acc: dict[str, list[float | None]]  # by model; None: no val video of the class
    current: Accuracy  # the model's current student, on the same val set
    current_student: CurrentScored  # with a model name: what the promotion gate compares


class EvaluationSummary(MetricsSummary, total=False):
    """``<run>/eval/metrics.json`` as the evaluate step writes it: the summary, and whether
    the fixed models' scores came from the score cache (``distill.score_cache``)."""

    teacher_scored: str  # 'cached' or 'computed'
    baseline_scored: str


class Metrics(TypedDict):
    """The Metrics artifact's metadata (the evaluate component keeps these keys)."""

    run_id: str
    run_root: str
    metrics_uri: str


class Evaluation(RunInfo):
    """What the evaluate step returns: the summary, the Markdown report, where they are."""

    metrics: EvaluationSummary
    report: str  # report.md
    metrics_uri: str


# --------------------------------------------------------------------------- export


class ExportSettings(TypedDict):
    """The export step's settings (``steps.export.export_settings``); a re-run must match."""

    kd_config: str
    student_config: str
    image: str
    export_tolerance: float
    speed_repeats: int
    speed_batch_size: int  # clips per call of the throughput timing
    torchscript: bool
    parity_clips: int  # val clips of the parity check (a seeded sample when fewer than all)


class ExportRecord(RunInfo):
    """``<run>/export/export.json``: a finished export (uploaded last)."""

    onnx: StoredObject
    files: dict[str, StoredObject]  # by file name, every object of export/
    parity: dict[str, Any]  # ONNX vs PyTorch on the val clips (``deploy.export``)
    kfp_metrics: dict[str, float]
    settings: ExportSettings


class Export(ExportRecord):
    """What the export step returns: the record, with the HTML report and the model card."""

    html: str
    model_card: str
