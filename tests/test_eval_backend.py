"""Evaluation at scale: the test loops on the training backend, gathered across ranks exactly
as one process scores; fixed models' scores cached; bad launches refused in one line; the
evaluation's own PyTorchJob / TrainJob against the Kubernetes API stand-in; a retry after
the evaluation was published returns it."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import KD_CONFIG, PIPELINE_TIMEOUT
from crd_schema import PYTORCHJOB_CRD, TRAINJOB_CRD, problems
from kube_server import FakeKube, pod
from test_job_ownership import IN_KFP, OWNER, step_pod
from test_pytorchjob import (
    CREATED,
    FAILED,
    NOT_RUNNING,
    PYTORCHJOB_WEBHOOK,
    RUN_ID,
    RUNNING,
    SUCCEEDED,
    containers,
    webhook_problems,
)
from test_trainjob import COMPLETE, TRAINER_WEBHOOK, trainer_webhook_problems
from test_trainjob import FAILED as TRAINJOB_FAILED

from video_kd import backends
from video_kd.backends import kube, owner
from video_kd.core.checks import InvalidInputError
from video_kd.core.errors import BAD_INPUT, UserError
from video_kd.distill import score_cache
from video_kd.runs import Manifest, RunLayout, publish, read_recorded_json, run_info
from video_kd.storage import s3


def _odd_val_root(kd_data, root, count: int = 5):
    """kd_data with its first ``count`` val videos: an odd number, so that two processes'
    shares are padded (the sampler repeats a sample to even them)."""
    root.mkdir()
    (root / 'videos').symlink_to(kd_data / 'videos')
    for name in ('classes.txt', 'train_list.txt'):
        shutil.copy(kd_data / name, root / name)
    lines = (kd_data / 'val_list.txt').read_text().splitlines()[:count]
    (root / 'val_list.txt').write_text('\n'.join(lines) + '\n')
    return root


@pytest.mark.slow
def test_two_processes_score_exactly_as_one(kd_data, tiny_teacher, tmp_path):
    """5 val videos on 2 torchrun processes (gloo, CPU): rank 1's share is padded with a
    repeat of sample 0; the gathered predictions and metrics are those of one process."""
    from video_kd.backends.local import run_local
    from video_kd.distill import evaluate

    root = _odd_val_root(kd_data, tmp_path / 'data')
    one = evaluate.evaluate('tsm_r50_tiny', str(tiny_teacher), str(root), str(tmp_path / 'w1'))
    out = tmp_path / 'two.json'
    code = run_local(
        ['-m', 'video_kd.distill.evaluate', 'tsm_r50_tiny', str(tiny_teacher),
         '--data-root', str(root), '--out', str(out), '--work-dir', str(tmp_path / 'w2')],
        nproc_per_node=2,
        env={'OMP_NUM_THREADS': '1'},
    )  # fmt: skip
    assert code == 0
    two = json.loads(out.read_text())
    assert one['num_samples'] == two['num_samples'] == 5  # the padded repeat not counted
    assert [p['index'] for p in two['predictions']] == list(range(5))
    strip = [{k: v for k, v in p.items() if k != 'score'} for p in one['predictions']]
    assert [{k: v for k, v in p.items() if k != 'score'} for p in two['predictions']] == strip
    for a, b in zip(one['predictions'], two['predictions'], strict=True):
        assert a['score'] == pytest.approx(b['score'], abs=1e-5)
    for key in ('top1_acc', 'top5_acc', 'mean_class_acc', 'confusion_matrix', 'config_hash'):
        assert one[key] == two[key], key


def _dataset(layout: RunLayout, val_list_sha: str = 'a' * 64) -> dict:
    return {
        'source': 's3://data/k400',
        'num_val': 3,
        'files': {'val_list.txt': {'sha256': val_list_sha}},
        'splits': {'val': {'videos_uri': 's3://data/k400/videos_val', 'list_uri': ''}},
    }


def test_a_score_cache_entry_for_another_key_is_a_clean_miss(bucket, caplog):
    """Entries live next to the dataset; one that records another checkpoint is never used."""
    layout = RunLayout(bucket, 'kd', 'r1')
    root = score_cache.cache_root(_dataset(layout), layout)
    assert root == 's3://data/k400/eval_scores'
    root = f's3://{bucket}/k400/eval_scores'  # the same, in the test's bucket
    key = score_cache.score_key('B' * 64, 'c' * 64, 'd' * 64)
    scores = {'top1_acc': 0.5, 'predictions': [{'index': 0, 'label': 1}]}
    caplog.set_level(logging.INFO, 'video_kd')
    assert score_cache.lookup(root, key, 'teacher') is None
    assert score_cache.store(root, key, scores)
    assert not score_cache.store(root, key, {'top1_acc': 0.9})  # written once: kept
    assert score_cache.lookup(root, key, 'teacher') == scores
    assert 'teacher: score cache hit' in caplog.text

    other = score_cache.score_key('e' * 64, 'c' * 64, 'd' * 64)
    foreign = json.loads(s3.read_bytes(score_cache.entry_uri(root, key)))
    s3.put_bytes(score_cache.entry_uri(root, other), json.dumps(foreign).encode())
    caplog.clear()
    assert score_cache.lookup(root, other, 'teacher') is None
    assert 'records another key' in caplog.text and 'a miss, scoring it' in caplog.text
    s3.put_bytes(score_cache.entry_uri(root, other), b'{"format": 1, "key": ')  # torn
    assert score_cache.lookup(root, other, 'teacher') is None

    # a dataset inside the run (generate://) or on a volume: the bucket's shared cache
    generated = {**_dataset(layout), 'source': 'generate://'}
    generated['splits'] = {'val': {'videos_uri': f'{layout.root}/data/source/videos'}}
    assert score_cache.cache_root(generated, layout).startswith(
        f's3://{bucket}/kd/cache/eval_scores/'
    )


def test_a_launch_that_cannot_run_is_one_line_before_anything_is_written(bucket):
    from video_kd.steps import evaluate

    layout = RunLayout(bucket, 'kd', 'r1')
    student = {'run_root': layout.root, 's3_uri': layout.uri('student', 's.pth'), 'sha256': ''}
    data = _dataset(layout)
    with pytest.raises(InvalidInputError) as caught:
        evaluate.run(data, student, 'tsm_mobilenetv2_tiny', training_backend='local',
                     num_workers=1, nproc_per_node=4, gpus_per_worker=0)  # fmt: skip
    assert str(caught.value) == (
        '4 evaluation processes for 3 val videos: use at most 3 '
        '(eval_num_workers x eval_nproc_per_node, or GPUs per node)'
    )
    with pytest.raises(InvalidInputError, match='gpus_per_worker=1 in local mode, but this '):
        evaluate.run(data, student, 'tsm_mobilenetv2_tiny', training_backend='local',
                     num_workers=1, nproc_per_node=1, gpus_per_worker=1)  # fmt: skip
    with pytest.raises(InvalidInputError, match=r'^eval_nproc_per_node \(-1'):
        evaluate.run(data, student, 'tsm_mobilenetv2_tiny', nproc_per_node=-2)
    assert not s3.list_uris(f's3://{bucket}/kd/')  # nothing submitted, fetched or written


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'eval_num_workers': -1}, "eval_num_workers (0: the training's) must be >= 0, got -1"),
        ({'eval_gpus_per_worker': -2}, "eval_gpus_per_worker (-1: the training's) must be >= -1"),
        ({'eval_nproc_per_node': 1.5}, 'eval_nproc_per_node (-1: the training'),
    ],
)
def test_evaluation_numbers_are_checked_with_the_inputs(kwargs, match):
    """The pipeline's check-inputs step (and video-kd submit) check the eval_* parameters."""
    from video_kd.core.errors import UserError, one_line
    from video_kd.steps import check_inputs

    with pytest.raises(UserError) as info:
        check_inputs.check_pipeline_params(kwargs)
    assert match in str(info.value) and str(info.value) == one_line(info.value)
    check_inputs.check_pipeline_params(
        {'eval_num_workers': 0, 'eval_gpus_per_worker': -1, 'eval_nproc_per_node': -1}
    )


def test_the_evaluate_command_exits_2_for_too_many_processes(bucket, tmp_path, capsys):
    """The step alone (python -m components.evaluate): one line, exit 2."""
    from components.evaluate.__main__ import main
    from video_kd.core.errors import run_cli

    layout = RunLayout(bucket, 'kd', 'r2')
    _published_run(layout, tmp_path, num_val=1)
    argv = ['--run-root', layout.root, '--kd-config', 'tsm_mobilenetv2_tiny', '--no-teacher',
            '--training-backend', 'local', '--nproc-per-node', '2']  # fmt: skip
    assert run_cli(main, argv) == BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        'error: 2 evaluation processes for 1 val videos: use at most 1 '
        '(eval_num_workers x eval_nproc_per_node, or GPUs per node)'
    )


@pytest.mark.slow
@pytest.mark.timeout(PIPELINE_TIMEOUT)
def test_a_retraining_scores_only_the_student(pipeline_run, s3_env, tmp_path, caplog):
    """The pipeline's evaluation computed the teacher's and the baseline's scores (a bucket of
    its own: an empty cache) on the training backend (local torchrun), and cached them next
    to the dataset; a retraining's run on the same dataset and teacher scores only its
    student, and the model's current student in the same job.  The step's retry returns
    that evaluation as published."""
    from video_kd.deploy import promotion
    from video_kd.steps import data_prep, evaluate
    from video_kd.steps import teacher as teacher_step
    from video_kd.steps.common import run_data_meta, run_step_output

    first = pipeline_run['metrics']
    assert (first['teacher_scored'], first['baseline_scored']) == ('computed', 'computed')
    root = pipeline_run['run_root']
    predictions = s3.read_json(RunLayout.from_root(root).uri('eval', 'predictions.json'))
    assert [p['index'] for p in predictions['student']] == list(range(first['num_val']))

    data = data_prep.run(run_data_meta(root)['source'], pipeline_run['bucket'], 'retrain',
                         workdir=tmp_path / 'prep')  # fmt: skip
    layout = RunLayout.from_root(data['run_root'])
    old_teacher, old_student = run_step_output(root, 'teacher'), run_step_output(root, 'student')
    teacher = teacher_step.run(layout.root, old_teacher['s3_uri'], old_teacher['sha256'],
                               kd_config=KD_CONFIG, num_classes=3)  # fmt: skip
    student_file = s3.download_file(old_student['s3_uri'], tmp_path / 'epoch_2_student.pth')
    student = {**run_info(layout), **publish(layout, 'student', student_file,
                                              student_file.name).meta()}  # fmt: skip
    # the first run's student, which the pipeline promoted, as this prefix's current student
    model = promotion.default_model_name(KD_CONFIG)
    promoted = promotion.ModelPlace(layout.bucket, RunLayout.from_root(root).prefix, model)
    here = promotion.ModelPlace(layout.bucket, layout.prefix, model)
    s3.put_bytes(here.current_uri, s3.read_bytes(promoted.current_uri))
    caplog.set_level(logging.INFO, 'video_kd')
    again = evaluate.run(data, student, KD_CONFIG, teacher=teacher, training_backend='local',
                         workdir=tmp_path / 'eval', model_name='')  # fmt: skip
    metrics = again['metrics']
    assert metrics['teacher_scored'] == 'cached'
    # the current student scored in the same job: the same checkpoint as this student
    assert metrics['current_student']['run_id'] == RunLayout.from_root(root).run_id
    assert not metrics['current_student']['problem']
    assert metrics['current'] == metrics['student']
    assert metrics['scored_with']['current']['config'] == KD_CONFIG
    assert 'teacher: score cache hit' in caplog.text
    assert 'evaluation on local: 1 node(s) x 1 process(es)' in caplog.text  # no train.json
    assert metrics['teacher'] == first['teacher'] and metrics['student'] == first['student']

    caplog.clear()  # the step's retry after it published: the evaluation as published
    retried = evaluate.run(data, student, KD_CONFIG, teacher=teacher, training_backend='local',
                           workdir=tmp_path / 'eval-retry', model_name='')  # fmt: skip
    assert retried['metrics'] == metrics and retried['report'] == again['report']
    assert 'published by an earlier attempt; returning it as it is' in caplog.text
    assert 'score cache' not in caplog.text and 'evaluation on local' not in caplog.text


# --- a retry after the evaluation was published ---------------------------------------------


def _published_run(layout: RunLayout, tmp_path, **dataset: Any) -> tuple[dict, dict]:
    """A run's dataset.json (``dataset``: keys to change) and student, recorded as data prep
    and convert leave them; the student is no checkpoint (b'not read'): nothing here may
    reach a test loop."""
    data = {**_dataset(layout), 'dataset_meta_uri': layout.dataset_meta_uri,
            'run_root': layout.root, 'classes': ['a', 'b', 'c'], **dataset}  # fmt: skip
    meta = tmp_path / 'dataset.json'
    meta.write_text(json.dumps(data))
    ckpt = tmp_path / 'epoch_1_student.pth'
    ckpt.write_bytes(b'not read')
    manifest = Manifest.load(layout)
    manifest.publish('data', meta, layout.dataset_meta_uri)
    entry = manifest.publish('student', ckpt, layout.uri('student', ckpt.name))
    return data, {**run_info(layout), **entry.meta()}


def test_a_retry_after_the_evaluation_was_published_returns_it(bucket, tmp_path, caplog):
    """KFP's retry, or the step run again, after metrics.json was published: the published
    evaluation as it is, nothing scored or submitted again (the student is no checkpoint: a
    test loop would fail on it); asked for another evaluation: one line, exit status 2.  An
    attempt that died before its metrics.json left files that a finishing one replaces.
    (The slow test_a_retraining_scores_only_the_student retries a real evaluation.)"""
    from video_kd.steps import evaluate
    from video_kd.steps.report import markdown_report, summarise_metrics

    layout = RunLayout(bucket, 'kd', 'r3')
    data, student = _published_run(layout, tmp_path)
    scored = {'top1_acc': 0.5, 'top5_acc': 1.0, 'mean_class_acc': 0.5, 'num_samples': 3,
              'classes': data['classes'], 'confusion_matrix': [[1, 0, 0], [0, 1, 0], [1, 0, 0]],
              'scored_with': KD_CONFIG, 'test_pipeline': []}  # fmt: skip
    summary = {**summarise_metrics('r3', {'student': scored}), 'teacher_scored': 'computed'}
    report = markdown_report(summary, student, None, '')
    for name, body in (('predictions.json', '{}'), ('report.md', report),
                       ('metrics.json', json.dumps(summary))):  # fmt: skip
        (tmp_path / name).write_text(body)
        publish(layout, 'eval', tmp_path / name, name)  # as the step does, metrics.json last
    before = s3.list_uris(layout.uri('eval'))
    caplog.set_level(logging.INFO, 'video_kd')

    def evaluate_again(**settings: Any) -> dict:
        return evaluate.run(data, student, KD_CONFIG, training_backend='local', num_workers=1,
                            gpus_per_worker=0, nproc_per_node=0, **settings)  # fmt: skip

    again = evaluate_again()
    assert again['metrics'] == summary and again['report'] == report
    assert again['metrics_uri'] == layout.uri('eval', 'metrics.json')
    assert 'published by an earlier attempt; returning it as it is' in caplog.text
    assert s3.list_uris(layout.uri('eval')) == before, 'no plan, no scores, nothing rewritten'
    with pytest.raises(UserError) as info:
        evaluate_again(model_name='')
    assert str(info.value) == (
        f'{layout.uri("eval", "metrics.json")} holds an evaluation of this run asked for '
        "otherwise (model_name None, now 'tsm-mobilenetv2_tiny'): start a new run to evaluate "
        'again'
    )
    assert info.value.exit_status == BAD_INPUT

    # an attempt that died before its metrics.json was recorded: not an evaluation
    unfinished = RunLayout(bucket, 'kd', 'r4')
    _published_run(unfinished, tmp_path)
    publish(unfinished, 'eval', tmp_path / 'report.md', 'report.md')
    s3.put_bytes(unfinished.uri('eval', 'metrics.json'), b'{}')  # uploaded, not recorded
    assert evaluate.published_evaluation(unfinished, {}) is None
    evaluate._drop_unfinished_publish(unfinished)
    assert not s3.list_uris(unfinished.uri('eval'))
    assert not Manifest.load(unfinished).find(unfinished.uri('eval', 'report.md'))
    (tmp_path / 'report.md').write_text('# Another attempt\n')
    publish(unfinished, 'eval', tmp_path / 'report.md', 'report.md')  # no overwrite refused


# --- the evaluation's own job on PyTorchJob / TrainJob ---------------------------------------


@dataclass(frozen=True)
class ClusterBackend:
    """What the API stand-in needs to play one backend's evaluation job."""

    plural: str
    crd: Any
    version: str
    webhook: str
    rules: Any
    succeeded: list
    failed: list

    def args(self, manifest: dict) -> list[str]:
        if self.plural == 'pytorchjobs':
            return containers(manifest)[0]['args']
        return manifest['spec']['trainer']['args']

    def deadline(self, manifest: dict) -> int:
        if self.plural == 'pytorchjobs':
            return manifest['spec']['runPolicy']['activeDeadlineSeconds']
        return manifest['spec']['activeDeadlineSeconds']

    def failed_pod(self, name: str) -> dict:
        """The job's first pod, its container exited 2 (bad input) as the operator reports it."""
        if self.plural == 'pytorchjobs':
            labels = {'training.kubeflow.org/job-name': name,
                      'training.kubeflow.org/replica-type': 'master'}  # fmt: skip
            return pod(f'{name}-master-0', labels, 'Failed', exit_code=2)
        labels = {'jobset.sigs.k8s.io/jobset-name': name,
                  'jobset.sigs.k8s.io/replicatedjob-name': 'node',
                  'batch.kubernetes.io/job-completion-index': '0'}  # fmt: skip
        return pod(f'{name}-node-0-0-abcde', labels, 'Failed', 'node', exit_code=2)


CLUSTER_BACKENDS = {
    'pytorchjob': ClusterBackend(
        'pytorchjobs', PYTORCHJOB_CRD, 'v1', PYTORCHJOB_WEBHOOK, webhook_problems,
        [[CREATED, RUNNING], [CREATED, NOT_RUNNING, SUCCEEDED]],
        [[CREATED, RUNNING], [CREATED, NOT_RUNNING, FAILED]],
    ),
    'trainjob': ClusterBackend(
        'trainjobs', TRAINJOB_CRD, 'v1alpha1', TRAINER_WEBHOOK, trainer_webhook_problems,
        [[], [COMPLETE]], [[], [TRAINJOB_FAILED]],
    ),
}  # fmt: skip


@pytest.fixture
def in_cluster(monkeypatch):
    """A KFP step pod's view of a cluster: the API stand-in as its in-cluster API, the step
    pod (owned by the run's Argo Workflow) in namespace ml."""
    with FakeKube() as fake:
        for name, value in {**IN_KFP, 'KUBERNETES_SERVICE_HOST': '10.96.0.1'}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(owner, 'current_namespace', lambda: 'ml')
        monkeypatch.setattr(kube, 'api_client', fake.api)  # the job's supervision
        monkeypatch.setattr(owner, 'api_client', fake.api)  # the step pod's owner
        fake.pods.append(step_pod())
        yield fake


@pytest.mark.parametrize('backend', sorted(CLUSTER_BACKENDS))
def test_the_evaluation_is_a_job_of_its_own_on_the_cluster(in_cluster, bucket, tmp_path, backend):
    """On PyTorchJob / TrainJob the test loops are the job <run_id>-eval, beside the
    training's: its manifest passes the operator's CRD schema (strictly) and webhook, runs
    evaluate_pod on the plan the step published, is owned by the run's Workflow, and is
    followed to its end and deleted.
    A job that ends without publishing the scores, or fails, is one line naming what is
    wrong (exit status 2), and no evaluation is published.  (The stand-in runs no pods:
    a real evaluate_pod's scores are in the slow tests, on the local backend.)"""
    from video_kd.steps import evaluate

    job = CLUSTER_BACKENDS[backend]
    layout = RunLayout(bucket, 'kd', RUN_ID)
    data, student = _published_run(layout, tmp_path)
    submitted: list[dict] = []

    def admit(manifest: dict) -> list[str]:
        submitted.append(manifest)
        return problems(manifest, job.crd, job.version) + job.rules(manifest)

    in_cluster.admission[job.plural] = (job.webhook, admit)
    name = backends.job_name(f'{RUN_ID}-eval')
    in_cluster.scripts[name] = job.succeeded

    def evaluate_on_cluster() -> None:
        evaluate.run(data, student, KD_CONFIG, training_backend=backend, num_workers=1,
                     gpus_per_worker=0, nproc_per_node=0, image='registry.local/video-kd:0.1',
                     timeout=30)  # fmt: skip

    with pytest.raises(UserError) as info:
        evaluate_on_cluster()
    (manifest,) = submitted
    assert manifest['metadata']['name'] == name != backends.job_name(RUN_ID)
    assert manifest['metadata']['annotations']['video-kd/run-id'] == f'{RUN_ID}-eval'
    # it goes with the run (the Workflow owns it) and ends by itself at the step's timeout
    assert manifest['metadata']['ownerReferences'] == [OWNER] and job.deadline(manifest) == 30
    args = job.args(manifest)
    at = args.index('video_kd.distill.evaluate_pod')
    plan_uri = args[at + 1]
    assert args[at - 1 :] == ['-m', 'video_kd.distill.evaluate_pod', plan_uri, '--run-root',
                              layout.root, '--work-dir', evaluate.POD_WORK_DIR]  # fmt: skip
    plan = read_recorded_json(Manifest.load(layout), plan_uri)
    assert plan['data_meta_uri'] == layout.dataset_meta_uri
    (model,) = plan['models']
    assert (model['name'], model['checkpoint_uri'], model['sha256']) == (
        'student', student['s3_uri'], student['sha256'])  # fmt: skip
    assert in_cluster.verbs(job.plural)[0] == 'POST' and 'WATCH' in in_cluster.verbs(job.plural)
    assert in_cluster.verbs(job.plural)[-1] == 'DELETE'
    assert str(info.value).startswith(f'refusing {model["scores_uri"]}: it is not in the run ')
    assert '\n' not in str(info.value) and info.value.exit_status == BAD_INPUT

    in_cluster.scripts[name] = job.failed
    in_cluster.pods.append(job.failed_pod(name))
    with pytest.raises(UserError) as info:
        evaluate_on_cluster()
    line = str(info.value)
    assert line.startswith(f'evaluation on {backend} (1 processes) failed: {name} failed: ')
    assert f'{job.failed_pod(name)["metadata"]["name"]}: exit 2 (Error)' in line
    assert '\n' not in line and info.value.exit_status == BAD_INPUT
    assert len(submitted) == 2 and not s3.exists(layout.uri('eval', 'metrics.json'))
