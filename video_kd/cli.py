"""``video-kd``: compile, run locally, upload, submit and schedule the KD pipeline.

    video-kd run-local                      # the whole pipeline here: KFP local runner + local S3
    video-kd compile                        # -> pipelines/kd_pipeline.yaml
    video-kd upload   --host URL --pipeline-name video-kd-distillation [--param k=v ...]
    video-kd submit   --host URL --param dataset_uri=s3://... --param teacher_url=...
    video-kd schedule --host URL --pipeline-name video-kd-distillation --cron "0 0 3 * * *" ...
    video-kd serve    /mnt/models --model-name NAME  # a KServe model server for an exported student
    video-kd configs                        # the shipped model / KD configs

S3 credentials only ever come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY; endpoint S3_ENDPOINT_URL), never from flags or
pipeline parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from video_kd import __version__
from video_kd.core.checks import check_range
from video_kd.core.errors import UserError, one_line, run_cli, setup_logging
from video_kd.distill.teacher_precision import cpu_has_native_bf16
from video_kd.distill.train_options import TrainOptions  # no mmengine: the parser takes its flags

if TYPE_CHECKING:
    from kfp import Client

    from pipelines.kd_pipeline import ClusterNames
    from video_kd.data.dataset import GeneratorOptions
    from video_kd.local_run import LocalS3

log = logging.getLogger('video_kd.cli')

PIPELINE_NAME = 'video-kd-distillation'
# training options run-local passes on as pipeline parameters (video_kd.distill.train_config)
RUN_LOCAL_TRAIN_OPTIONS = ('teacher_precision', 'teacher_logit_cache')
# The demo's settings (run-local's defaults), chosen by measurement over seeds
# (``benchmarks/kd_gain.py --demo``, results in benchmarks/README.md).  At the tiny config's own
# schedule (15 epochs, lr 1e-3) both students stay near chance and the "gain" is whatever the
# host's float rounding makes of it; at 20 epochs and lr 3e-3 the distilled student learns
# and the one alone mostly does not yet.  The data are those of earlier demos (their cache
# in .local-run/inputs stays valid); 40 validation clips, 2.5 points each.
DEMO_DATA: GeneratorOptions = dict(
    num_classes=5, train_per_class=20, val_per_class=8, num_frames=12, size=64
)
# 10 of the tiny config's 15 epochs (its cosine schedule fitted to 10): the teacher reaches
# 80% top-1 on the demo's data (12: 95%, 15: 87.5%) in the time the cold demo has for it, and
# teaches better than the 95% one (seed 0: KD 90.0% vs 72.5%; its softer logits carry more
# than the label), measured with benchmarks/kd_gain.py --demo
DEMO_TEACHER_EPOCHS = 10
DEMO_EPOCHS = 20  # the KD student and the baseline, the same schedule for both
DEMO_LR = 3e-3  # AdamW, the KD student and the baseline alike (the teacher keeps 1e-3)
# A fixed thread count per training: the same float reductions on every host whatever its
# core count (results do not depend on how many cores a laptop has).  The teacher and the
# baseline, trained before the pipeline, train side by side with one thread each; the
# pipeline's steps run one at a time, with two.
DEMO_INPUT_THREADS = 1
DEMO_THREADS = 2
# The frozen teacher runs as an inference model (eval mode; video_kd.distill.fast_teacher):
# MMRazor runs it in train mode, where the TSM head's dropout (0.5) perturbs every logit the
# student is taught.  In bf16 where the CPU multiplies bf16 natively (AVX512-BF16, AMX): a KD
# step in 0.86x the time (benchmarks/README.md, KD step overhead: 0.348 -> 0.299 s, TSM tiny);
# elsewhere oneDNN emulates bf16 (not expected to be faster; not measured), so fp32.  The demo's gain over seeds
# is measured for both (benchmarks/kd_gain.py --demo: kd_bf16, kd_fp32).
DEMO_TEACHER_PRECISION = 'bf16' if cpu_has_native_bf16() else 'fp32'
# The KD run keeps a checkpoint every 5 epochs (and the best), not every epoch: each is 27 MB
# through the local S3 server, half a minute of the demo in all.  Saving draws no random
# numbers: the scores are those of a run that saves every epoch.
DEMO_KD_CFG_OPTIONS = ['default_hooks.checkpoint.interval=5']
_CRON_MACROS = ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly')


# --------------------------------------------------------------------------- helpers


def pipeline_file() -> Path:
    from pipelines.kd_pipeline import PIPELINE_FILE

    return PIPELINE_FILE


def pipeline_parameters(package: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The pipeline's parameters as compiled in ``package`` (default: the repository's
    YAML): name -> {type, default}."""
    import yaml

    package = Path(package or pipeline_file())
    if not package.is_file():
        raise UserError(f'{package} does not exist: run `video-kd compile` first')
    return parameters_of(next(yaml.safe_load_all(package.read_text())))


def parameters_of(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> {type, default} of a compiled pipeline spec: the IR, or what the KFP API
    returns for an uploaded version (``{pipeline_spec, platform_spec}`` when the package
    holds a platform spec, as ours does)."""
    spec = spec.get('pipeline_spec', spec)
    params = spec['root']['inputDefinitions']['parameters']
    return {
        name: {'type': p['parameterType'], 'default': p.get('defaultValue')}
        for name, p in params.items()
    }


def parse_params(
    pairs: list[str], package: str | Path | None = None, known: dict | None = None
) -> dict[str, Any]:
    """``key=value`` pairs -> typed pipeline arguments; unknown keys are refused.  The
    parameters are ``known`` (an uploaded version's) or those compiled in ``package``."""
    known = known or pipeline_parameters(package)
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition('=')
        if not sep:
            raise UserError(f'--param {pair!r}: expected key=value')
        if key not in known:
            raise UserError(
                f'--param {key}: not a parameter of the pipeline; known: {", ".join(sorted(known))}'
            )
        kind = known[key]['type']
        try:
            if kind == 'NUMBER_INTEGER':
                params[key] = int(value)
            elif kind == 'NUMBER_DOUBLE':
                params[key] = float(value)
            elif kind in ('LIST', 'STRUCT'):
                params[key] = json.loads(value)
                if not isinstance(params[key], list if kind == 'LIST' else dict):
                    raise ValueError(value)
            elif kind == 'BOOLEAN':
                if value.lower() not in ('true', 'false', '1', '0'):
                    raise ValueError(value)
                params[key] = value.lower() in ('true', '1')
            else:
                params[key] = value
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            expected = 'a JSON list' if kind == 'LIST' else kind.lower()
            raise UserError(f'--param {key}={value}: expected {expected}') from exc
    return params


def pipeline_arguments(
    params: dict[str, Any], package: str | Path | None = None, known: dict | None = None
) -> dict[str, Any]:
    """A run's arguments: the compiled defaults (of ``known``, else of ``package``), typed
    (the IR writes an integer's default as 2.0), with ``params`` over them."""
    typed = {'NUMBER_INTEGER': int, 'NUMBER_DOUBLE': float}
    defaults = {
        name: typed.get(p['type'], lambda value: value)(p['default'])
        for name, p in (known or pipeline_parameters(package)).items()
        if p['default'] is not None
    }
    return {**defaults, **params}


def check_params(
    params: dict[str, Any], package: str | Path | None = None, known: dict | None = None
) -> None:
    """Every step's checks on a run's arguments (``steps.check_inputs.check_pipeline_params``),
    before anything is submitted: one line, exit status 2."""
    # deferred: every step and OpenMMLab, not needed by --help
    from video_kd.steps.check_inputs import check_pipeline_params

    check_pipeline_params(pipeline_arguments(params, package, known))


def check_cron(cron: str) -> str:
    """KFP's cron: six fields (seconds first) or a macro / ``@every <duration>``."""
    cron = cron.strip()
    if cron in _CRON_MACROS or re.fullmatch(r'@every \d+[smh](\d+[smh])*', cron):
        return cron
    if len(cron.split()) != 6:
        raise UserError(
            f'--cron {cron!r}: KFP needs six fields, seconds first '
            '("0 0 3 * * *" = 03:00 daily), or @daily / @weekly / @every 24h'
        )
    return cron


def kfp_client(args: argparse.Namespace) -> Client:
    import kfp

    with kfp_errors(args.host):
        return kfp.Client(
            host=args.host,
            namespace=args.namespace,
            existing_token=os.environ.get('KFP_TOKEN') or None,
        )


@contextlib.contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """The KFP API's failures (unreachable, 401/403/404, ...) as one line naming the host."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise UserError(f'KFP API at {host}: HTTP {exc.status} {exc.reason}') from exc
    except (HTTPError, ConnectionError, OSError) as exc:
        raise UserError(f'cannot reach the KFP API at {host}: {one_line(exc)}') from exc


def find_pipeline_id(client: Client, name: str, namespace: str | None = None) -> str | None:
    """The id of the pipeline of that name: in ``namespace`` (multi-user KFP's namespaced
    pipelines; single-user KFP ignores it), or among the shared ones when None."""
    if namespace is None:
        return client.get_pipeline_id(name)  # kfp's own lookup lists the shared pipelines
    by_name = {'predicates': [{'operation': 'EQUALS', 'key': 'display_name', 'stringValue': name}]}
    found = (
        client.list_pipelines(
            filter=json.dumps(by_name), namespace=namespace, page_size=2
        ).pipelines
        or []
    )
    if len(found) > 1:
        raise UserError(f'{len(found)} pipelines are named {name!r} in namespace {namespace}')
    return found[0].pipeline_id if found else None


def uploaded_version(client: Client, args: argparse.Namespace) -> tuple[str, Any]:
    """(pipeline id, version) that ``submit``/``schedule`` run: the pipeline named
    ``--pipeline-name`` in ``--namespace`` (multi-user KFP), else the shared one; its
    version named ``--version``, else its latest."""
    pipeline_id = None
    if args.namespace:
        pipeline_id = find_pipeline_id(client, args.pipeline_name, args.namespace)
    if pipeline_id is None:
        pipeline_id = find_pipeline_id(client, args.pipeline_name)
    if pipeline_id is None:
        raise UserError(
            f'pipeline {args.pipeline_name!r} is not in {args.host}: `video-kd upload` it '
            'first (or give --package FILE to run a compiled file as it is)'
        )
    wanted = getattr(args, 'version', None)
    by_name = {
        'predicates': [{'operation': 'EQUALS', 'key': 'display_name', 'stringValue': wanted}]
    }
    versions = (
        client.list_pipeline_versions(
            pipeline_id,
            sort_by='created_at desc',
            page_size=1,
            filter=json.dumps(by_name) if wanted else None,
        ).pipeline_versions
        or []
    )
    if not versions:
        which = f'no version named {wanted!r}' if wanted else 'no version'
        raise UserError(f'pipeline {args.pipeline_name!r} has {which}')
    return pipeline_id, versions[0]


def uploaded_parameters(client: Client, pipeline_id: str, version: Any) -> dict[str, dict]:
    """The parameters of an uploaded version, with the defaults stored there."""
    found = client.get_pipeline_version(pipeline_id, version.pipeline_version_id)
    return parameters_of(found.pipeline_spec or {})


def cluster_names(args: argparse.Namespace) -> ClusterNames:
    """The chart release's object names, from ``upload``'s flags."""
    from pipelines.kd_pipeline import ClusterNames

    defaults = ClusterNames()
    return ClusterNames(
        **{
            field: getattr(args, field) or getattr(defaults, field)
            for field in ClusterNames.__dataclass_fields__
        }
    )


# --------------------------------------------------------------------------- commands


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.kd_pipeline import ClusterNames, compile_pipeline

    names = cluster_names(args)
    defaults = parse_params(args.param)
    if defaults or names != ClusterNames():
        out = compile_with_defaults(args.output or pipeline_file(), names, defaults)
    else:
        out = compile_pipeline(args.output or pipeline_file())
    print(out)
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    # deferred: mmengine, not needed by --help
    from video_kd.openmmlab.config import available_configs

    print('\n'.join(available_configs()))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    # deferred: boto3, not needed by --help
    from video_kd.deploy import run_index

    where = (args.s3_bucket, args.s3_prefix)
    if args.runs_command == 'list':
        print(run_index.list_runs(*where))
    elif args.runs_command == 'show':
        print(run_index.show(*where, args.run))
    elif args.runs_command == 'compare':
        print(run_index.compare(*where, args.a, args.b))
    else:
        print(run_index.current(*where, args.model))
    return 0


def compile_with_defaults(
    path: Path, names: ClusterNames, defaults: dict[str, Any] | None = None
) -> Path:
    """The pipeline compiled with a release's names and keys and with ``defaults`` as the
    default values of those parameters (kfp's ``pipeline_parameters``: the IR's
    root.inputDefinitions.parameters[k].defaultValue), which a run started from the KFP UI
    or without arguments gets."""
    from kfp import compiler

    from pipelines.kd_pipeline import build_pipeline

    compiler.Compiler().compile(
        build_pipeline(names), str(path), pipeline_parameters=defaults or None
    )
    return path


def cmd_upload(args: argparse.Namespace) -> int:
    from pipelines.kd_pipeline import ClusterNames

    names = cluster_names(args)
    if args.package is not None and (args.param or names != ClusterNames()):
        raise UserError(
            '--package uploads that file as it is: --param and the cluster names need the '
            'pipeline compiled here (leave out --package)'
        )
    defaults = parse_params(args.param)
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package
        if package is None and (defaults or names != ClusterNames()):
            # the release's own names and keys, its run settings as the parameters' defaults
            package = compile_with_defaults(Path(tmp) / 'kd_pipeline.yaml', names, defaults)
        package = str(package or pipeline_file())
        client = kfp_client(args)
        with kfp_errors(args.host):
            return _upload(client, package, args)


def _upload(client: Client, package: str, args: argparse.Namespace) -> int:
    """A new pipeline, or a new version of the one of that name.  With --namespace the
    pipeline is multi-user KFP's namespaced pipeline (what 'create pipelines' in that
    namespace allows); without, a shared one."""
    namespace = args.namespace or None
    pipeline_id = find_pipeline_id(client, args.pipeline_name, namespace)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(
            package,
            pipeline_name=args.pipeline_name,
            description=args.description,
            namespace=namespace,
        )
        where = f'namespace {namespace}' if namespace else 'shared'
        print(f'uploaded pipeline {args.pipeline_name} ({where}, id {pipeline.pipeline_id})')
        return 0

    version = args.version or f'{__version__}-{time.strftime("%Y%m%d-%H%M%S", time.gmtime())}'
    created = client.upload_pipeline_version(
        package, pipeline_version_name=version, pipeline_id=pipeline_id
    )
    print(
        f'uploaded version {version} of pipeline {args.pipeline_name} '
        f'(id {pipeline_id}, version id {created.pipeline_version_id})'
    )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    if args.package:  # a compiled file, as it is: checked here before KFP is contacted
        params = parse_params(args.param, args.package)
        check_params(params, args.package)
        client = kfp_client(args)
        with kfp_errors(args.host):
            return _submit_package(client, params, args)
    client = kfp_client(args)
    with kfp_errors(args.host):
        pipeline_id, version = uploaded_version(client, args)
        known = uploaded_parameters(client, pipeline_id, version)
    params = parse_params(args.param, known=known)
    check_params(params, known=known)  # with the defaults the uploaded version holds
    with kfp_errors(args.host):
        experiment = client.create_experiment(args.experiment, namespace=args.namespace)
        name = args.run_name or f'{args.pipeline_name} {time.strftime("%Y-%m-%d %H:%M:%S")}'
        run = client.run_pipeline(
            experiment.experiment_id,
            name,
            params=params,
            pipeline_id=pipeline_id,
            version_id=version.pipeline_version_id,
            service_account=args.service_account,
        )
        print(
            f'submitted run {run.run_id} of pipeline {args.pipeline_name} version '
            f'{version.display_name} to {args.host} (experiment {args.experiment})'
        )
        return _wait(client, run.run_id, args.wait)


def _submit_package(client: Client, params: dict[str, Any], args: argparse.Namespace) -> int:
    run = client.create_run_from_pipeline_package(
        str(args.package),
        arguments=params,
        run_name=args.run_name,
        experiment_name=args.experiment,
        namespace=args.namespace,
        service_account=args.service_account,
        enable_caching=False,
    )
    print(
        f'submitted run {run.run_id} of {args.package} to {args.host} (experiment {args.experiment})'
    )
    return _wait(client, run.run_id, args.wait)


def _wait(client: Client, run_id: str, seconds: int | None) -> int:
    """With --wait: the run's end state; exit status 1 unless it succeeded."""
    if not seconds:
        return 0
    result = client.wait_for_run_completion(run_id, timeout=seconds)
    print(f'run {run_id}: {result.state}')
    return 0 if str(result.state).upper() == 'SUCCEEDED' else 1


def cmd_schedule(args: argparse.Namespace) -> int:
    cron = check_cron(args.cron)
    client = kfp_client(args)
    with kfp_errors(args.host):
        pipeline_id, version = uploaded_version(client, args)
        known = uploaded_parameters(client, pipeline_id, version)
    params = parse_params(args.param, known=known)
    check_params(params, known=known)  # every run gets the uploaded version's defaults
    with kfp_errors(args.host):
        return _schedule(client, cron, params, args, pipeline_id, version)


def _schedule(
    client: Client,
    cron: str,
    params: dict[str, Any],
    args: argparse.Namespace,
    pipeline_id: str,
    version: Any,
) -> int:
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
        version_id=version.pipeline_version_id,
        params=params,
        service_account=args.service_account,
        enabled=True,
        no_catchup=True,
        max_concurrency=1,
    )
    print(
        f'recurring run {job_name} ({job.recurring_run_id}): {cron}, version '
        f'{version.display_name}, params {json.dumps(params, sort_keys=True)}'
    )
    return 0


# --------------------------------------------------------------------------- run-local


def _fmt(m: dict | None) -> str:
    if not m:
        return 'n/a'
    return (
        f'top-1 {m["top1_acc"]:.3f}  top-5 {m["top5_acc"]:.3f}  '
        f'mean-class {m["mean_class_acc"]:.3f}'
    )


def cmd_run_local(args: argparse.Namespace) -> int:
    # deferred: the local harness and its steps, run-local only
    from video_kd import local_run

    setup_logging()
    if not args.verbose:  # the steps' own logs are in their processes; here only warnings
        logging.getLogger().setLevel(logging.WARNING)
    train_options: dict[str, Any] = {name: getattr(args, name) for name in RUN_LOCAL_TRAIN_OPTIONS}
    train_options['cfg_options'] = [*local_run.student_cfg_options(args.lr), *DEMO_KD_CFG_OPTIONS]
    # every pipeline argument checked before a directory, a server or a model is made
    local_run.run_arguments(args.bucket, args.prefix, args.epochs, args.workers, args.run_id,
                            train_options, args.lr)  # fmt: skip
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_opts: GeneratorOptions = {
        **DEMO_DATA,
        'num_classes': args.classes,
        'train_per_class': args.train_per_class,
        'val_per_class': args.val_per_class,
    }
    # every training (and step) of the demo on a fixed thread count: the same numbers on a
    # laptop with 2 cores and a server with 64; the environment's setting wins if given
    given = os.environ.get('OMP_NUM_THREADS')
    input_threads = given or str(DEMO_INPUT_THREADS)
    threads = os.environ.setdefault('OMP_NUM_THREADS', str(DEMO_THREADS))
    print(
        f'threads (OMP_NUM_THREADS): {input_threads} per input training (side by side), '
        f'{threads} per pipeline step'
    )
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        server = None
        if args.s3_endpoint:
            env = {'S3_ENDPOINT_URL': args.s3_endpoint}
        else:
            server = stack.enter_context(local_run.LocalS3(workdir / 'moto.log'))
            env = server.env()
            print(f'local S3 server (moto): {server.endpoint}')
        stack.enter_context(local_run.s3_environment(env))
        result = local_run.run_local_pipeline(
            workdir,
            args.bucket,
            args.prefix,
            data_opts,
            args.teacher_epochs,
            args.epochs,
            not args.no_baseline,
            args.workers,
            args.run_id,
            train_options,
            lr=args.lr,
            input_threads=input_threads,
            kept_caches=workdir / 'caches' if server else None,
        )
        mirror = local_run.mirror_run(
            result['run_root'], workdir / 's3' / args.bucket / args.prefix / result['run_id']
        )
        _print_summary(result, mirror, time.monotonic() - started)
        if server and args.serve:
            _serve(server, result['run_root'])
    return 0


def _print_summary(result: dict[str, Any], mirror: Path, seconds: float) -> None:
    metrics = result['metrics']
    print()
    print('=' * 78)
    print(f'run {result["run_id"]} finished in {seconds:.0f}s')
    print(
        f'artifacts:  {result["run_root"]}/  ({len(result["manifest"].entries)} objects '
        'in manifest.json)'
    )
    # deferred: boto3, not needed by --help
    from video_kd.runs import RUN_STEPS

    for step in RUN_STEPS:
        n = sum(1 for e in result['manifest'].entries if e.step == step)
        print(f'  {step + "/":9} {n} objects')
    print(f'copied to:  {mirror}/')
    print(f'KFP local pipeline root (artifact metadata): {result["kfp_root"]}')
    print(f'student with KD    : {_fmt(metrics.get("student"))}')
    print(f'student without KD : {_fmt(metrics.get("baseline"))}')
    print(f'teacher            : {_fmt(metrics.get("teacher"))}')
    if 'kd_gain' in metrics:
        print(f'KD gain (top-1)    : {metrics["kd_gain"]["top1_acc"]:+.3f}')
    # deferred: the local harness, already imported by run-local
    from video_kd.local_run import kd_verdict

    verdict = kd_verdict(metrics)
    if verdict:
        print(verdict)
    print(f'report: {mirror / "eval" / "report.md"}, {mirror / "export" / "report.html"}')


def _serve(server: LocalS3, run_root: str) -> None:
    env = server.env()
    print(
        f'\nS3 server stays up at {server.endpoint} until Ctrl-C; browse it with\n'
        f'  AWS_ACCESS_KEY_ID={env["AWS_ACCESS_KEY_ID"]} '
        f'AWS_SECRET_ACCESS_KEY={env["AWS_SECRET_ACCESS_KEY"]} '
        f'aws --endpoint-url {server.endpoint} s3 ls --recursive {run_root}/'
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------- parser


def _kfp_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        '--host',
        required=True,
        help='KFP API, e.g. http://localhost:8080 (kubectl port-forward) or $KFP_HOST',
    )
    p.add_argument(
        '--namespace',
        help='Kubeflow profile namespace (multi-user KFP): upload makes the pipeline a '
        "namespaced one there; submit and schedule put the run's experiment there and run "
        "the namespace's pipeline, else the shared one of that name",
    )


def _cluster_settings(p: argparse.ArgumentParser, what: str) -> None:
    """The settings ``upload`` and ``compile`` compile into the pipeline: parameters'
    defaults and the Helm release's object names."""
    p.add_argument(
        '--param',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help=f'default value of a pipeline parameter in the {what} pipeline (repeatable): '
        'what a run started from the KFP UI, or given no value, gets; typed and checked as '
        'for submit/schedule',
    )
    names = p.add_argument_group(
        'cluster names',
        "the Helm release's objects the step pods read (compiled into the "
        f'{what} pipeline; defaults: a release named video-kd)',
    )
    names.add_argument('--s3-config-map', help='ConfigMap with S3_ENDPOINT_URL (video-kd-s3)')
    names.add_argument(
        '--s3-credentials', help='Secret with the S3 credentials (video-kd-s3-credentials)'
    )
    names.add_argument(
        '--access-key-id-key', help='its key of the access key id (AWS_ACCESS_KEY_ID)'
    )
    names.add_argument(
        '--secret-access-key-key', help='its key of the secret key (AWS_SECRET_ACCESS_KEY)'
    )
    names.add_argument(
        '--training-config-map', help='ConfigMap of the training pods (video-kd-training)'
    )
    names.add_argument('--pvc', help='PersistentVolumeClaim mounted in every step pod (none)')
    names.add_argument(
        '--pvc-mount', help='where it is mounted (/cache); a dataset_uri may be a path under it'
    )


def build_parser() -> argparse.ArgumentParser:
    from components import STEPS  # the pipeline's steps in order (a test keeps it so)

    steps = ' -> '.join(step.replace('_', ' ') for step in STEPS)
    parser = argparse.ArgumentParser(
        prog='video-kd',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Distill MMAction2 video recognizers with MMRazor, as a Kubeflow '
        f'pipeline of {len(STEPS)} steps:\n  {steps}\n'
        '(training as a PyTorchJob, a TrainJob or under torchrun in its pod); artifacts '
        'in S3 under\ns3://<bucket>/<prefix>/<run id>/.',
        epilog='examples:\n'
        '  video-kd run-local                 # whole pipeline on this machine: tiny models, generated videos\n'
        '  video-kd compile                   # pipelines/kd_pipeline.yaml\n'
        '  video-kd upload --host http://localhost:8080 '
        '--pipeline-name video-kd-distillation\n'
        '  video-kd submit --host http://localhost:8080 '
        '--param dataset_uri=s3://b/data --param teacher_url=https://... \\\n'
        '      --param teacher_sha256=<hex>\n'
        '  video-kd schedule --host http://localhost:8080 --pipeline-name '
        'video-kd-distillation \\\n'
        '      --cron "0 0 3 * * *" --experiment nightly --param s3_bucket=video-kd\n'
        f'each step alone: python -m components.<{"|".join(STEPS)}> --help\n'
        'S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment '
        '(a Kubernetes Secret in the cluster); endpoint: S3_ENDPOINT_URL.',
    )
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser(
        'compile',
        help='compile the pipeline to its IR YAML',
        description='Compile pipelines/kd_pipeline.py to the IR YAML that the '
        'Kubeflow UI and `kfp pipeline upload` take; with --param or a cluster name, '
        'compiled with them (what `upload` would upload).',
    )
    p.add_argument('--output', type=Path, help='default: pipelines/kd_pipeline.yaml')
    _cluster_settings(p, 'compiled')
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        'run-local',
        help='run the whole pipeline here (KFP local runner + local S3 server)',
        description="Run the whole pipeline on this machine with KFP's local runner "
        '(kfp.local.SubprocessRunner), a local S3 server (moto) and the generated '
        'synthetic dataset, with tiny configs: trains a tiny teacher and the '
        f"student alone (the no-KD baseline) first, then runs the pipeline's {len(STEPS)} "
        f'steps ({steps}; training under torchrun, as a PyTorchJob pod would) and prints '
        "where the artifacts are and the student's metrics with and without KD. The KD "
        "run's frozen teacher runs as an inference model in bf16 where this CPU has native "
        'bf16 (AVX512-BF16, AMX), else in fp32 (--teacher-precision).',
    )
    p.add_argument(
        '--workdir',
        default='.local-run',
        help='what later calls reuse: the dataset, the trained teacher and baseline, the '
        "bucket's shared caches (the teacher's and baseline's scores, the video checks), and "
        'a copy of each run; default: .local-run',
    )
    p.add_argument('--bucket', default='video-kd')
    p.add_argument('--prefix', default='video-kd')
    # Defaults: DEMO_* above (measured: the KD gain is clear over seeds)
    p.add_argument(
        '--epochs',
        type=int,
        default=DEMO_EPOCHS,
        help=f'KD (and baseline) epochs; default {DEMO_EPOCHS}',
    )
    p.add_argument(
        '--lr',
        type=float,
        default=DEMO_LR,
        help=f'AdamW learning rate of the KD student and the baseline; default {DEMO_LR:g}',
    )
    p.add_argument(
        '--teacher-epochs',
        type=int,
        default=DEMO_TEACHER_EPOCHS,
        help=f'default {DEMO_TEACHER_EPOCHS}',
    )
    p.add_argument('--workers', type=int, default=1, help='torchrun processes; default 1')
    p.add_argument(
        '--classes',
        type=int,
        default=DEMO_DATA['num_classes'],
        help=f'generated classes (2-5); default {DEMO_DATA["num_classes"]}',
    )
    for option in ('train_per_class', 'val_per_class'):
        p.add_argument(
            '--' + option.replace('_', '-'),
            type=int,
            default=DEMO_DATA[option],
            help=f'default {DEMO_DATA[option]}',
        )
    p.add_argument('--no-baseline', action='store_true', help='skip the no-KD baseline')
    p.add_argument('--run-id', help='default: <UTC time>-<random>')
    TrainOptions.add_arguments(  # the pipeline parameters
        p, only=RUN_LOCAL_TRAIN_OPTIONS, defaults={'teacher_precision': DEMO_TEACHER_PRECISION}
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
        description='Upload the compiled pipeline (pipelines/kd_pipeline.yaml, or --package) '
        'to the KFP API: a new pipeline, or a new version when one of that name exists. '
        'With --param or a cluster name, the pipeline is compiled here with them first.',
    )
    _kfp_args(p)
    p.add_argument('--pipeline-name', default=PIPELINE_NAME)
    p.add_argument(
        '--version',
        help='version name, when the pipeline exists; default <package version>-<UTC time>',
    )
    p.add_argument(
        '--package',
        type=Path,
        help='upload this file as it is (no --param, no cluster names); '
        'default: pipelines/kd_pipeline.yaml',
    )
    p.add_argument(
        '--description',
        default='Video KD: MMAction2 + MMRazor distillation',
        help='of a new pipeline (default: %(default)s)',
    )
    _cluster_settings(p, 'uploaded')
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser(
        'submit',
        help='start one run of the uploaded pipeline on a KFP host',
        description='Start a run of the pipeline uploaded to a KFP host (`video-kd upload`): '
        'the one named --pipeline-name, its latest version or --version, with the defaults '
        "stored in it (the release's names, `upload --param` values). With --package, a "
        "compiled file is run as it is instead. Every step's checks on the parameters "
        "(the pipeline's check-inputs step) run first: a bad one is one line here, before "
        'a run is created. Caching is off in the compiled pipeline.',
    )
    _kfp_args(p)
    p.add_argument('--pipeline-name', default=PIPELINE_NAME, help='default: %(default)s')
    p.add_argument('--version', help='version name of the uploaded pipeline; default: latest')
    p.add_argument(
        '--param',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='pipeline parameter (repeatable); each is described in the Kubeflow UI and in '
        'pipelines/kd_pipeline.py',
    )
    p.add_argument('--experiment', default='video-kd')
    p.add_argument('--run-name', help='default: <pipeline name> <local time>')
    p.add_argument('--service-account')
    p.add_argument(
        '--package',
        type=Path,
        help='run this compiled pipeline file as it is (e.g. pipelines/kd_pipeline.yaml) '
        'instead of the uploaded pipeline',
    )
    p.add_argument(
        '--wait',
        type=int,
        metavar='SECONDS',
        help='wait for the run to finish; exit status 1 unless it succeeded',
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        'schedule',
        help='create/replace a recurring run (scheduled retraining)',
        description='Create (or replace, same name) a KFP recurring run of the '
        'latest version of an uploaded pipeline: one run at a time, no catch-up runs; '
        'the parameters are checked first, as for submit.',
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
    p.add_argument(
        '--param',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='pipeline parameter of every run (repeatable), as for submit',
    )
    p.add_argument('--service-account', help='Kubernetes ServiceAccount the runs use')
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser(
        'serve',
        help='serve an exported student (KServe model server: v1 and v2 HTTP)',
        description="Serve an exported student with KServe's ModelServer: videos (raw "
        'bytes, base64, s3:// or https:// URIs) in, top-k class names and scores out, over '
        'the Open Inference Protocol (POST /v2/models/NAME/infer, one BYTES input) and v1 '
        '(POST /v1/models/NAME:predict, {"instances": [{"b64": ...} or {"uri": ...}]}). '
        "Each video is decoded and sampled by the student's own test pipeline "
        '(preprocess.json), the ONNX student runs in ONNX Runtime. Health: /v2/health/ready; '
        'Prometheus metrics: /metrics.',
    )
    p.add_argument(
        'model_dir',
        help="the export step's directory (student.onnx, preprocess.json): a path "
        "(KServe's storage initializer puts storageUri at /mnt/models) or an s3:// prefix",
    )
    p.add_argument('--model-name', required=True, help='the name in the /v1 and /v2 routes')
    p.add_argument('--http-port', type=int, default=8080, help='default 8080')
    p.add_argument('--grpc-port', type=int, default=8081, help='default 8081')
    p.add_argument('--no-grpc', action='store_true', help="don't serve KServe's gRPC v2")
    p.add_argument('--top-k', type=int, default=5, help='class names per video; default 5')
    p.add_argument('--threads', type=int, help='ONNX Runtime intra-op threads (default: all)')
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser('configs', help='list the shipped configs')
    p.set_defaults(func=cmd_configs)
    _runs_parser(sub)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    check_range('--top-k', args.top_k, 1)
    for flag in ('http_port', 'grpc_port'):
        check_range(f'--{flag.replace("_", "-")}', getattr(args, flag), 1, 65535)
    setup_logging()
    # deferred: kserve and ONNX Runtime load in seconds; only this command needs them
    from video_kd.deploy.serve import serve

    serve(
        args.model_dir,
        args.model_name,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=not args.no_grpc,
        top_k=args.top_k,
        threads=args.threads,
    )
    return 0


def _runs_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'runs',
        help="the runs in S3: list, show, compare, a model's current student",
        description='Every run under s3://<bucket>/<prefix>/, read from S3 only (each '
        "run's eval/metrics.json, export/export.json, promote/decision.json; parallel "
        "GETs), and each model's current student (models/<name>/current.json).",
    )
    p.add_argument('--s3-bucket', default='video-kd', help='default: video-kd')
    p.add_argument('--s3-prefix', default='video-kd', help='default: video-kd')
    runs = p.add_subparsers(dest='runs_command', required=True, metavar='WHAT')
    runs.add_parser('list', help='date, status, teacher, student top-1, KD gain, speedup, '
                    'promoted; newest first')  # fmt: skip
    runs.add_parser('show', help='one run: every accuracy, the export, the decision').add_argument(
        'run'
    )
    compare = runs.add_parser('compare', help='two runs side by side, with B - A')
    compare.add_argument('a')
    compare.add_argument('b')
    runs.add_parser('current', help="a model's current student").add_argument('model')
    p.set_defaults(func=cmd_runs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args.func, args)


if __name__ == '__main__':
    sys.exit(main())
