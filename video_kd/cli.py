"""``video-kd``: compile, run locally, upload, submit and schedule the KD pipeline.

    video-kd run-local                      # the whole pipeline here: KFP local runner + local S3
    video-kd compile                        # -> pipelines/kd_pipeline.yaml
    video-kd upload   --host URL --pipeline-name video-kd-distillation
    video-kd submit   --host URL --param dataset_uri=s3://... --param teacher_url=...
    video-kd schedule --host URL --pipeline-name video-kd-distillation --cron "0 0 3 * * *" ...
    video-kd configs                        # the shipped model / KD configs

S3 credentials only ever come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY; endpoint S3_ENDPOINT_URL), never from flags or
pipeline parameters.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger('video_kd.cli')

PIPELINE_NAME = 'video-kd-distillation'
LOCAL_ACCESS_KEY = 'video-kd-local'
LOCAL_SECRET_KEY = 'video-kd-local-secret'
TINY_KD_CONFIG = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
TINY_TEACHER_CONFIG = 'tsm_r50_tiny'
TINY_STUDENT_CONFIG = 'tsm_mobilenetv2_tiny'
# Tiny runs on a laptop: no DataLoader worker processes (the batch sizes are the config's).
TINY_CFG_OPTIONS = [
    'train_dataloader.num_workers=0',
    'val_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'val_dataloader.persistent_workers=False',
]
_CRON_MACROS = ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly')


class CliError(RuntimeError):
    """Printed as one ``error: ...`` line; exit status 2."""


# --------------------------------------------------------------------------- helpers


def pipeline_file() -> Path:
    from pipelines.kd_pipeline import PIPELINE_FILE

    return PIPELINE_FILE


def pipeline_parameters(package: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The pipeline's parameters as compiled: name -> {type, default}."""
    import yaml

    package = Path(package or pipeline_file())
    if not package.is_file():
        raise CliError(f'{package} does not exist: run `video-kd compile` first')
    spec = next(yaml.safe_load_all(package.read_text()))
    params = spec['root']['inputDefinitions']['parameters']
    return {
        name: {'type': p['parameterType'], 'default': p.get('defaultValue')}
        for name, p in params.items()
    }


def parse_params(pairs: list[str], package: str | Path | None = None) -> dict[str, Any]:
    """``key=value`` pairs -> typed pipeline arguments; unknown keys are refused."""
    known = pipeline_parameters(package)
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition('=')
        if not sep:
            raise CliError(f'--param {pair!r}: expected key=value')
        if key not in known:
            raise CliError(
                f'--param {key}: not a parameter of the pipeline; known: {", ".join(sorted(known))}'
            )
        kind = known[key]['type']
        try:
            if kind == 'NUMBER_INTEGER':
                params[key] = int(value)
            elif kind == 'NUMBER_DOUBLE':
                params[key] = float(value)
            elif kind == 'BOOLEAN':
                if value.lower() not in ('true', 'false', '1', '0'):
                    raise ValueError(value)
                params[key] = value.lower() in ('true', '1')
            else:
                params[key] = value
        except ValueError as exc:
            raise CliError(f'--param {key}={value}: expected {kind.lower()}') from exc
    return params


def check_cron(cron: str) -> str:
    """KFP's cron: six fields (seconds first) or a macro / ``@every <duration>``."""
    cron = cron.strip()
    if cron in _CRON_MACROS or re.fullmatch(r'@every \d+[smh](\d+[smh])*', cron):
        return cron
    if len(cron.split()) != 6:
        raise CliError(
            f'--cron {cron!r}: KFP needs six fields, seconds first '
            '("0 0 3 * * *" = 03:00 daily), or @daily / @weekly / @every 24h'
        )
    return cron


def kfp_client(args):
    import kfp

    return kfp.Client(
        host=args.host, namespace=args.namespace, existing_token=os.environ.get('KFP_TOKEN') or None
    )


def find_pipeline_id(client, name: str) -> str | None:
    return client.get_pipeline_id(name)


# --------------------------------------------------------------------------- commands


def cmd_compile(args) -> int:
    from pipelines.kd_pipeline import compile_pipeline

    out = compile_pipeline(args.output or pipeline_file())
    print(out)
    return 0


def cmd_configs(args) -> int:
    from video_kd.config import available_configs

    print('\n'.join(available_configs()))
    return 0


def cmd_upload(args) -> int:
    client = kfp_client(args)
    package = str(args.package or pipeline_file())
    pipeline_id = find_pipeline_id(client, args.pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(
            package, pipeline_name=args.pipeline_name, description=args.description
        )
        print(f'uploaded pipeline {args.pipeline_name} (id {pipeline.pipeline_id})')
        return 0
    from video_kd import __version__

    version = args.version or f'{__version__}-{time.strftime("%Y%m%d-%H%M%S", time.gmtime())}'
    created = client.upload_pipeline_version(
        package, pipeline_version_name=version, pipeline_id=pipeline_id
    )
    print(
        f'uploaded version {version} of pipeline {args.pipeline_name} '
        f'(id {pipeline_id}, version id {created.pipeline_version_id})'
    )
    return 0


def cmd_submit(args) -> int:
    params = parse_params(args.param, args.package)
    client = kfp_client(args)
    run = client.create_run_from_pipeline_package(
        str(args.package or pipeline_file()),
        arguments=params,
        run_name=args.run_name,
        experiment_name=args.experiment,
        namespace=args.namespace,
        service_account=args.service_account,
        enable_caching=False,
    )
    print(f'submitted run {run.run_id} to {args.host} (experiment {args.experiment})')
    if args.wait:
        result = client.wait_for_run_completion(run.run_id, timeout=args.wait)
        print(f'run {run.run_id}: {result.state}')
        return 0 if str(result.state).upper() == 'SUCCEEDED' else 1
    return 0


def cmd_schedule(args) -> int:
    cron = check_cron(args.cron)
    params = parse_params(args.param)
    client = kfp_client(args)
    pipeline_id = find_pipeline_id(client, args.pipeline_name)
    if pipeline_id is None:
        raise CliError(
            f'pipeline {args.pipeline_name!r} is not in {args.host}: `video-kd upload` it first'
        )
    versions = (
        client.list_pipeline_versions(
            pipeline_id, sort_by='created_at desc', page_size=1
        ).pipeline_versions
        or []
    )
    if not versions:
        raise CliError(f'pipeline {args.pipeline_name!r} has no version')
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    job_name = args.job_name or f'{args.pipeline_name}-{args.experiment}'
    existing = (
        client.list_recurring_runs(
            experiment_id=experiment.experiment_id, page_size=200
        ).recurring_runs
        or []
    )
    for old in existing:
        if old.display_name == job_name:
            client.delete_recurring_run(old.recurring_run_id)
            print(f'replaced recurring run {job_name} ({old.recurring_run_id})')
    job = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=job_name,
        cron_expression=cron,
        pipeline_id=pipeline_id,
        version_id=versions[0].pipeline_version_id,
        params=params,
        service_account=args.service_account,
        enabled=True,
        no_catchup=True,
        max_concurrency=1,
    )
    print(
        f'recurring run {job_name} ({job.recurring_run_id}): {cron}, version '
        f'{versions[0].display_name}, params {json.dumps(params, sort_keys=True)}'
    )
    return 0


# --------------------------------------------------------------------------- run-local


class LocalS3:
    """A moto S3 server on 127.0.0.1 in a subprocess (``moto[server]``, the local extra)."""

    def __init__(self, log_path: Path):
        import socket

        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f'http://127.0.0.1:{self.port}'
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LocalS3:
        import urllib.error
        import urllib.request

        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise CliError(
                'the local S3 server needs moto[server]: pip install -e ".[local]"'
            ) from exc
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, 'wb') as out:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CliError(f'the local S3 server exited, see {self.log_path}')
            try:
                urllib.request.urlopen(self.endpoint + '/moto-api/', timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                time.sleep(0.1)
        raise CliError(f'the local S3 server did not start, see {self.log_path}')

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _train_input_model(config: str, data_root: Path, work_dir: Path, epochs: int) -> Path:
    """Train a tiny teacher / baseline once (reused by later run-local calls)."""
    ckpt = work_dir / f'epoch_{epochs}.pth'
    if ckpt.is_file():
        print(f'  reusing {ckpt}')
        return ckpt
    if work_dir.exists():
        shutil.rmtree(work_dir)
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'video_kd.train',
            config,
            '--work-dir',
            str(work_dir),
            '--data-root',
            str(data_root),
            '--max-epochs',
            str(epochs),
            '--no-data-check',
            '--cfg-options',
            *TINY_CFG_OPTIONS,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not ckpt.is_file():
        raise CliError(f'training {config} failed: {result.stderr.strip().splitlines()[-1:]}')
    print(f'  trained {config} for {epochs} epochs in {time.monotonic() - started:.0f}s')
    return ckpt


def _upload_input(path: Path, uri: str) -> tuple[str, str]:
    from video_kd import s3

    if not s3.exists(uri):
        s3.upload_file(path, uri)
    return uri, s3.sha256_file(path)


def run_local_pipeline(
    workdir: Path,
    bucket: str,
    prefix: str,
    data_opts: dict[str, int],
    teacher_epochs: int,
    kd_epochs: int,
    baseline: bool,
    workers: int,
    run_id: str | None = None,
    pipeline_args: dict[str, Any] | None = None,
    runner: Any = None,
) -> dict[str, Any]:
    """Everything ``run-local`` does once the S3 env is set; returns where things are.

    ``pipeline_args``: more kd_pipeline parameters (teacher_precision, ...).
    ``runner``: a KFP local runner; default: every step a subprocess of this Python.
    """
    import boto3
    from kfp import local

    from pipelines.kd_pipeline import kd_pipeline
    from video_kd import dataset, s3

    client = s3.s3_client()
    try:
        client.head_bucket(Bucket=bucket)
    except Exception:
        client.create_bucket(Bucket=bucket)
    del boto3
    key = '-'.join(f'{k}{v}' for k, v in sorted(data_opts.items()))
    inputs = workdir / 'inputs' / key
    data_root = inputs / 'dataset'
    if not (data_root / dataset.CLASSES_FILE).is_file():
        print(f'generating the synthetic dataset in {data_root}')
        dataset.generate_dataset(data_root, **data_opts)
    dataset_uri = s3.join_uri(f's3://{bucket}', 'datasets', key)
    if not s3.exists(s3.join_uri(dataset_uri, dataset.CLASSES_FILE)):
        s3.upload_dir(data_root, dataset_uri)
    print(f'dataset: {dataset_uri}')
    print(f'training the tiny teacher ({TINY_TEACHER_CONFIG})')
    teacher = _train_input_model(
        TINY_TEACHER_CONFIG, data_root, inputs / f'teacher-{teacher_epochs}e', teacher_epochs
    )
    teacher_url, teacher_sha = _upload_input(
        teacher, s3.join_uri(f's3://{bucket}', 'models', key, f'teacher-{teacher_epochs}e.pth')
    )
    baseline_url = baseline_sha = ''
    if baseline:
        print(f'training the student alone, the no-KD baseline ({TINY_STUDENT_CONFIG})')
        base = _train_input_model(
            TINY_STUDENT_CONFIG, data_root, inputs / f'baseline-{kd_epochs}e', kd_epochs
        )
        baseline_url, baseline_sha = _upload_input(
            base, s3.join_uri(f's3://{bucket}', 'models', key, f'baseline-{kd_epochs}e.pth')
        )
    from video_kd.steps import new_run_id

    run_id = run_id or new_run_id(uuid.uuid4().hex[:8])
    print(f'running the pipeline with the KFP local runner, run id {run_id}')
    local.init(
        runner=runner or local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workdir / 'kfp-root'),
        raise_on_error=True,
    )
    kd_pipeline(
        dataset_uri=dataset_uri,
        teacher_url=teacher_url,
        teacher_sha256=teacher_sha,
        kd_config=TINY_KD_CONFIG,
        student_config=TINY_STUDENT_CONFIG,
        baseline_url=baseline_url,
        baseline_sha256=baseline_sha,
        num_workers=workers,
        gpus_per_worker=0,
        nproc_per_node=1,
        max_epochs=kd_epochs,
        cfg_options=' '.join(TINY_CFG_OPTIONS),
        train_mode='local',
        s3_bucket=bucket,
        s3_prefix=prefix,
        run_id=run_id,
        **(pipeline_args or {}),
    )
    layout = s3.RunLayout(bucket, prefix, run_id)
    manifest = s3.Manifest.load(layout)
    metrics_uri = layout.uri('eval', 'metrics.json')
    b, k = s3.parse_s3_uri(metrics_uri)
    metrics = json.loads(client.get_object(Bucket=b, Key=k)['Body'].read())
    return {
        'run_id': run_id,
        'run_root': layout.root,
        'manifest': manifest,
        'metrics': metrics,
        'kfp_root': str(workdir / 'kfp-root'),
    }


def mirror_run(run_root: str, dest: Path) -> Path:
    """Copy a run's S3 directory to disk (the local S3 server keeps it in memory only)."""
    from video_kd import s3

    s3.download_dir(run_root, dest)
    return dest


def _fmt(m: dict | None) -> str:
    if not m:
        return 'n/a'
    return (
        f'top-1 {m["top1_acc"]:.3f}  top-5 {m["top5_acc"]:.3f}  '
        f'mean-class {m["mean_class_acc"]:.3f}'
    )


def cmd_run_local(args) -> int:
    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_opts = dict(
        num_classes=args.classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        num_frames=12,
        size=64,
    )
    started = time.monotonic()
    server = None
    if args.s3_endpoint:
        os.environ['S3_ENDPOINT_URL'] = args.s3_endpoint
        endpoint = args.s3_endpoint
    else:
        server = LocalS3(workdir / 'moto.log').__enter__()
        endpoint = server.endpoint
        os.environ.update(
            {
                'S3_ENDPOINT_URL': endpoint,
                'AWS_ACCESS_KEY_ID': LOCAL_ACCESS_KEY,
                'AWS_SECRET_ACCESS_KEY': LOCAL_SECRET_KEY,
                'AWS_DEFAULT_REGION': 'us-east-1',
            }
        )
        for name in ('AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_ENDPOINT_URL'):
            os.environ.pop(name, None)
        print(f'local S3 server (moto): {endpoint}')
    try:
        result = run_local_pipeline(
            workdir,
            args.bucket,
            args.prefix,
            data_opts,
            args.teacher_epochs,
            args.epochs,
            not args.no_baseline,
            args.workers,
            args.run_id,
            {
                'teacher_precision': args.teacher_precision or '',
                'teacher_logit_cache': args.teacher_logit_cache,
            },
        )
        mirror = mirror_run(
            result['run_root'], workdir / 's3' / args.bucket / args.prefix / result['run_id']
        )
        metrics = result['metrics']
        print()
        print('=' * 78)
        print(f'run {result["run_id"]} finished in {time.monotonic() - started:.0f}s')
        print(
            f'artifacts:  {result["run_root"]}/  ({len(result["manifest"].entries)} objects '
            'in manifest.json)'
        )
        for step in ('data', 'teacher', 'train', 'student', 'eval'):
            n = sum(1 for e in result['manifest'].entries if e.step == step)
            print(f'  {step + "/":9} {n} objects')
        print(f'copied to:  {mirror}/')
        print(f'KFP local pipeline root (artifact metadata): {result["kfp_root"]}')
        print(f'student with KD    : {_fmt(metrics.get("student"))}')
        print(f'student without KD : {_fmt(metrics.get("baseline"))}')
        print(f'teacher            : {_fmt(metrics.get("teacher"))}')
        if 'kd_gain' in metrics:
            print(f'KD gain (top-1)    : {metrics["kd_gain"]["top1_acc"]:+.3f}')
        print(f'report: {mirror / "eval" / "report.md"}')
        if server and args.serve:
            print(
                f'\nS3 server stays up at {endpoint} until Ctrl-C; browse it with\n'
                f'  AWS_ACCESS_KEY_ID={LOCAL_ACCESS_KEY} '
                f'AWS_SECRET_ACCESS_KEY={LOCAL_SECRET_KEY} '
                f'aws --endpoint-url {endpoint} s3 ls --recursive '
                f'{result["run_root"]}/'
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        if server:
            server.__exit__(None, None, None)
    return 0


# --------------------------------------------------------------------------- parser


def _kfp_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        '--host',
        required=True,
        help='KFP API, e.g. http://localhost:8080 (kubectl port-forward) or $KFP_HOST',
    )
    p.add_argument('--namespace', help='Kubeflow profile namespace (multi-user)')


def build_parser() -> argparse.ArgumentParser:
    from video_kd.fast_teacher import PRECISIONS

    parser = argparse.ArgumentParser(
        prog='video-kd',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Distill MMAction2 video recognizers with MMRazor, as a Kubeflow pipeline '
        '(data prep -> teacher download -> KD training as a PyTorchJob -> student '
        'conversion -> evaluation; artifacts in S3 under '
        's3://<bucket>/<prefix>/<run id>/).',
        epilog='examples:\n'
        '  video-kd run-local                 # whole pipeline on this machine (~3 min)\n'
        '  video-kd compile                   # pipelines/kd_pipeline.yaml\n'
        '  video-kd upload --host http://localhost:8080 '
        '--pipeline-name video-kd-distillation\n'
        '  video-kd submit --host http://localhost:8080 '
        '--param dataset_uri=s3://b/data --param teacher_url=https://... \\\n'
        '      --param teacher_sha256=<hex>\n'
        '  video-kd schedule --host http://localhost:8080 --pipeline-name '
        'video-kd-distillation \\\n'
        '      --cron "0 0 3 * * *" --experiment nightly --param s3_bucket=video-kd\n'
        'each step alone: python -m components.<data_prep|teacher_download|train|'
        'convert|evaluate> --help\n'
        'S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment '
        '(a Kubernetes Secret in the cluster); endpoint: S3_ENDPOINT_URL.',
    )
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser(
        'compile',
        help='compile the pipeline to its IR YAML',
        description='Compile pipelines/kd_pipeline.py to the IR YAML that the '
        'Kubeflow UI and `kfp pipeline upload` take.',
    )
    p.add_argument('--output', type=Path, help='default: pipelines/kd_pipeline.yaml')
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        'run-local',
        help='run the whole pipeline here (KFP local runner + local S3 server)',
        description="Run the whole pipeline on this machine with KFP's local runner "
        '(kfp.local.SubprocessRunner), a local S3 server (moto) and the generated '
        'synthetic dataset, with tiny configs: trains a tiny teacher and the '
        'student alone (the no-KD baseline) first, then runs the five steps '
        '(training under torchrun, as a PyTorchJob pod would) and prints where '
        "the artifacts are and the student's metrics with and without KD.",
    )
    p.add_argument('--workdir', default='.local-run', help='default: .local-run')
    p.add_argument('--bucket', default='video-kd')
    p.add_argument('--prefix', default='video-kd')
    # Defaults: the smallest budget where the tiny teacher clearly beats the student alone
    # (about 80% vs 50% top-1 on 5 classes), so the demo's KD gain means something.
    p.add_argument('--epochs', type=int, default=15, help='KD (and baseline) epochs; default 15')
    p.add_argument('--teacher-epochs', type=int, default=15, help='default 15')
    p.add_argument('--workers', type=int, default=1, help='torchrun processes; default 1')
    p.add_argument('--classes', type=int, default=5, help='generated classes (2-5); default 5')
    p.add_argument('--train-per-class', type=int, default=20, help='default 20')
    p.add_argument('--val-per-class', type=int, default=8, help='default 8')
    p.add_argument('--no-baseline', action='store_true', help='skip the no-KD baseline')
    p.add_argument('--run-id', help='default: <UTC time>-<random>')
    p.add_argument(
        '--teacher-precision',
        choices=list(PRECISIONS),
        help='pipeline parameter teacher_precision: the teacher as an inference '
        'model (default: as MMRazor runs it)',
    )
    p.add_argument(
        '--teacher-logit-cache',
        action='store_true',
        help='pipeline parameter teacher_logit_cache (next to the dataset in S3)',
    )
    p.add_argument(
        '--s3-endpoint',
        help='use this S3 server (credentials from the environment) instead of starting moto',
    )
    p.add_argument(
        '--serve', action='store_true', help='keep the local S3 server up afterwards, until Ctrl-C'
    )
    p.add_argument('-v', '--verbose', action='store_true')
    p.set_defaults(func=cmd_run_local)

    p = sub.add_parser(
        'upload',
        help='upload the compiled pipeline to a KFP host',
        description='Upload pipelines/kd_pipeline.yaml to the KFP API: a new '
        'pipeline, or a new version when it exists already.',
    )
    _kfp_args(p)
    p.add_argument('--pipeline-name', default=PIPELINE_NAME)
    p.add_argument('--version', help='version name; default <package version>-<UTC time>')
    p.add_argument('--package', type=Path, help='default: the compiled pipeline')
    p.add_argument('--description', default='Video KD: MMAction2 + MMRazor distillation')
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser(
        'submit',
        help='start one run on a KFP host',
        description='Start a run of the compiled pipeline on a KFP host.',
    )
    _kfp_args(p)
    p.add_argument(
        '--param',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='pipeline parameter (repeatable); see the pipeline parameters in README.md',
    )
    p.add_argument('--experiment', default='video-kd')
    p.add_argument('--run-name')
    p.add_argument('--service-account')
    p.add_argument('--package', type=Path)
    p.add_argument('--wait', type=int, metavar='SECONDS', help='wait for the run to finish')
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        'schedule',
        help='create/replace a recurring run (scheduled retraining)',
        description='Create (or replace, same name) a KFP recurring run of the '
        'latest version of an uploaded pipeline.',
    )
    _kfp_args(p)
    p.add_argument('--pipeline-name', default=PIPELINE_NAME)
    p.add_argument(
        '--cron',
        required=True,
        help='KFP cron, six fields, seconds first ("0 0 3 * * *" = 03:00 daily, '
        'UTC), or @daily / @weekly / @every 24h',
    )
    p.add_argument('--experiment', default='video-kd')
    p.add_argument('--job-name', help='default: <pipeline name>-<experiment>')
    p.add_argument('--param', action='append', default=[], metavar='KEY=VALUE')
    p.add_argument('--service-account', help='Kubernetes ServiceAccount the runs use')
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser('configs', help='list the shipped configs')
    p.set_defaults(func=cmd_configs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from video_kd import download, s3
    from video_kd.steps import StepError

    try:
        return args.func(args)
    except (CliError, StepError, s3.S3Error, download.DownloadError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except Exception as exc:
        # kfp's local runner raises RuntimeError naming the failed task; the API raises
        # ApiException/ConnectionError: one line, not a traceback.
        if type(exc).__name__ in (
            'RuntimeError',
            'ApiException',
            'MaxRetryError',
            'ConnectionError',
            'NewConnectionError',
        ):
            print(
                f'error: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}', file=sys.stderr
            )
            return 1
        raise


if __name__ == '__main__':
    sys.exit(main())
