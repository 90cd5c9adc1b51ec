"""Entry point of every evaluation process: ``torchrun -m video_kd.distill.evaluate_pod PLAN_URI ...``.

The evaluate step runs its test loops where the training ran — a PyTorchJob, a TrainJob
or torchrun on the step's machine — with this command, as the train step runs
``video_kd.distill.train_pod``.  The step publishes a plan (``<run>/eval/<attempt>/plan.json``:
the models to score, their configs, checkpoints and sha256s, where each one's scores go);
rank 0 of each pod fetches the checkpoints and the val list, each checked against its
sha256, the other ranks wait for it; then every rank runs MMAction2's test loop on its
share of the val list (mmengine's ``DefaultSampler``) and the metrics gather the shares
over the process group (``distill.evaluate``).  Rank 0 publishes each model's scores,
per-sample predictions included, to the run; the step reads them back.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from video_kd.core.artifacts import Dataset
from video_kd.core.errors import run_cli, setup_logging
from video_kd.core.process import die_with_parent
from video_kd.data.data_stream import check_mounted
from video_kd.distill import evaluate
from video_kd.distill.train_pod import fetch_lists, use_checked_lists
from video_kd.openmmlab.config import teacher_config
from video_kd.openmmlab.runtime import is_main_process, launcher_from_env, wait_for_file
from video_kd.runs import Manifest, RunLayout, read_recorded_json
from video_kd.storage.download import fetch_verified

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='torchrun ... -m video_kd.distill.evaluate_pod',
        description="Evaluation entry point of a training backend's pod (and of local mode): "
        "score the plan's models on the run's val list with MMAction2's test loop, each "
        'process its share, and publish their scores to the run.',
    )
    parser.add_argument('plan', help="s3:// URI of the evaluate step's plan.json")
    parser.add_argument('--run-root', required=True, help="the run's s3:// directory")
    parser.add_argument('--work-dir', required=True, help='local working directory of this pod')
    return parser.parse_args(argv)


def model_config(model: dict[str, Any], inputs: Path) -> str:
    """The config a plan's model is scored with: its own, or for a teacher its config with
    the KD config's teacher as the model (``openmmlab.config.teacher_config``), written
    by ``fetch_inputs``."""
    if not model.get('teacher_of'):
        return model['config']
    return str(inputs / f'{model["name"]}_config.py')


def fetch_inputs(manifest: Manifest, plan: dict, data_meta: Dataset, inputs: Path) -> None:
    """Rank 0 of a pod: each model's checkpoint (sha256-checked) and config, the val list."""
    inputs.mkdir(parents=True, exist_ok=True)
    fetch_lists(manifest, data_meta, inputs)
    for model in plan['models']:
        fetch_verified(model['checkpoint_uri'], inputs / f'{model["name"]}.pth', model['sha256'])
        if model.get('teacher_of'):
            teacher_config(model['teacher_of']).dump(model_config(model, inputs))


def main(argv: list[str] | None = None) -> int:
    if 'TORCHELASTIC_RUN_ID' in os.environ:  # under torchrun: a killed torchrun takes us along
        die_with_parent(signal.SIGTERM, os.getppid())
    args = parse_args(argv)
    setup_logging()
    layout = RunLayout.from_root(args.run_root)
    manifest = Manifest.load(layout)
    plan = read_recorded_json(manifest, args.plan)
    data_meta: Dataset = read_recorded_json(manifest, plan['data_meta_uri'])
    check_mounted(data_meta, splits=('val',))
    work = Path(args.work_dir)
    inputs = work / 'inputs'
    ready = inputs / '.ready'
    if int(os.environ.get('LOCAL_RANK', '0')) == 0:  # one download per node (pod)
        fetch_inputs(manifest, plan, data_meta, inputs)
        ready.write_text('')
    else:
        wait_for_file(ready)
    data = use_checked_lists(data_meta, inputs)
    launcher = launcher_from_env()
    for model in plan['models']:
        name = model['name']
        scores = evaluate.evaluate(
            model_config(model, inputs),
            str(inputs / f'{name}.pth'),
            data,
            str(work / f'w_{name}'),
            launcher=launcher,
        )
        if is_main_process():
            scores['checkpoint'] = model['checkpoint_uri']  # not this pod's copy
            out = work / f'{name}_scores.json'
            out.write_text(json.dumps(scores))
            manifest.publish('eval', out, model['scores_uri'])
            log.info('%s: top-1 %.4f on %d videos', name, scores['top1_acc'], scores['num_samples'])
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
