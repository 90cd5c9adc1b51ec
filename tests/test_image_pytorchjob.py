"""The training step's PyTorchJob pods, run as containers of the shipped image.

The train step runs for real (``video_kd.steps.train.run`` with the pytorchjob backend): it
publishes the resolved config and builds the PyTorchJob from the chart's settings; in place
of a cluster, each of the job's pods (Master and one Worker) runs as a podman container of
the image with exactly its container's command, args and env from the manifest, the Secret
references resolved as the kubelet resolves them, and the env the Training Operator v1.9
adds (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ... : ``local.local_pod_env``), so the
two torchruns rendezvous with each other as the two pods do. Then the step checks what it
checks after a real job (the checkpoints in S3, recorded in the run's manifest) and records
its output. See tests/containers.py for when this skips.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import containers
import pytest
import torch
from s3_servers import ACCESS_KEY, SECRET_KEY

from video_kd import backends
from video_kd.backends import local, pytorchjob
from video_kd.distill.s3_hook import LOG_DIR, list_checkpoints
from video_kd.distill.train_config import TrainOptions
from video_kd.local_run import TINY_CFG_OPTIONS
from video_kd.runs import Manifest, RunLayout
from video_kd.steps import common, data_prep
from video_kd.steps import teacher as teacher_step
from video_kd.steps import train as train_step
from video_kd.storage import s3

KD_CONFIG = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
GEN = 'generate://?num_classes=3&train_per_class=4&val_per_class=2&num_frames=12'
NODES = 2
MASTER_ADDR = '127.0.0.1'  # host network: the Master pod's Service name, here
POD_TIMEOUT = 600


def random_teacher(num_classes: int, path: Path) -> str:
    """A checkpoint that fits the KD config's teacher (random weights: the pods are tested)."""
    from mmrazor.registry import MODELS

    from video_kd.openmmlab.config import load_config, set_num_classes
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    teacher_cfg = load_config(KD_CONFIG).model.teacher
    set_num_classes(teacher_cfg, num_classes)
    torch.save({'state_dict': MODELS.build(teacher_cfg).state_dict()}, path)
    return str(path)


def container_env(container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's env as the kubelet gives it: values as they are, Secret keys looked up
    (an optional key that is missing is left out; a required one fails the pod)."""
    env = {}
    for var in container['env']:
        if 'value' in var:
            env[var['name']] = var['value']
            continue
        ref = var['valueFrom']['secretKeyRef']
        value = secrets.get(ref['name'], {}).get(ref['key'])
        if value is not None:
            env[var['name']] = value
        else:
            assert ref.get('optional'), f'{var["name"]}: Secret {ref["name"]} lacks {ref["key"]}'
    return env


class PodmanPyTorchJob:
    """``backends.run_training`` for the pytorchjob backend, with podman for the cluster."""

    def __init__(self, image: str, secrets: dict[str, dict[str, str]], log_dir: Path):
        self.image, self.secrets, self.log_dir = image, secrets, log_dir
        self.manifest: dict = {}
        self.pods: dict[str, dict] = {}  # pod name -> argv, env, exit code, log

    def run(self, name: str, spec: backends.TrainingJobSpec, timeout: float, **_) -> None:
        assert name == 'pytorchjob'
        self.manifest = backends.manifest(name, spec)
        replicas = self.manifest['spec']['pytorchReplicaSpecs']
        self.started = time.monotonic()
        nproc = int(self.manifest['spec']['nprocPerNode'])
        # The Master's Service port; a free one, since the pods share the host's network.
        port = local.free_port()
        pods = [(f'{spec.name}-master-0', replicas[pytorchjob.MASTER], 0)]
        pods += [
            (f'{spec.name}-worker-{i}', replicas[pytorchjob.WORKER], i + 1)
            for i in range(replicas.get(pytorchjob.WORKER, {}).get('replicas', 0))
        ]
        nnodes = len(pods)
        procs = {}
        try:
            for pod_name, replica, rank in pods:
                pod = self.pod(pod_name, replica['template']['spec'], rank, nnodes, nproc, port)
                log = open(pod['log'], 'w')  # noqa: SIM115 (closed when the pod ends)
                procs[pod_name] = (subprocess.Popen(
                    pod['argv'], env=containers.engine_env(), stdout=log,
                    stderr=subprocess.STDOUT), log)  # fmt: skip
                self.pods[pod_name] = pod
            deadline = time.monotonic() + min(timeout, POD_TIMEOUT)
            for pod_name, (proc, log) in procs.items():
                try:
                    self.pods[pod_name]['exit_code'] = proc.wait(
                        timeout=max(1, deadline - time.monotonic())
                    )
                finally:
                    log.close()
        finally:
            for pod_name, (proc, _) in procs.items():
                if proc.poll() is None:  # timed out: stop the pod's container, then its podman
                    containers.podman('rm', '--force', '--time', '0', pod_name, timeout=60)
                    proc.kill()
                    proc.wait()
        self.took = time.monotonic() - self.started
        failed = {n: p['exit_code'] for n, p in self.pods.items() if p['exit_code'] != 0}
        if failed:
            raise backends.TrainingJobFailed(
                f'PyTorchJob {spec.name} (podman)', 'Failed', f'exit codes {failed}',
                ' | '.join(self.tail(n) for n in failed),
            )  # fmt: skip

    def pod(self, name: str, pod_spec: dict, rank: int, nnodes: int, nproc: int, port: int):
        """The podman command of one pod: its one container, as the kubelet would start it."""
        (container,) = pod_spec['containers']
        assert container['name'] == pytorchjob.CONTAINER_NAME and container['image'] == self.image
        env = container_env(container, self.secrets)
        operator = local.local_pod_env(rank, nnodes, nproc, MASTER_ADDR, port)
        assert not env.keys() & operator.keys(), 'the job must leave these to the operator'
        env.update(operator)
        argv = ['podman', 'run', '--rm', '--name', name, '--network', 'host', '--user', '10001']
        # Kubernetes' command replaces the image's ENTRYPOINT, its args the image's CMD
        argv += ['--entrypoint', json.dumps(container['command'])]
        volumes = {v['name']: v for v in pod_spec.get('volumes') or []}
        for mount in container.get('volumeMounts') or []:
            empty_dir = volumes[mount['name']].get('emptyDir')
            assert empty_dir is not None, f'volume {mount["name"]}: only emptyDir runs here'
            if empty_dir.get('medium') == 'Memory':
                argv += ['--mount', f'type=tmpfs,destination={mount["mountPath"]},tmpfs-mode=1777']
            else:
                argv += ['--mount', f'type=volume,destination={mount["mountPath"]}']
        for key, value in env.items():
            argv += ['--env', f'{key}={value}']
        argv += [self.image, *container['args']]
        log = self.log_dir / f'{name}.log'
        return {'argv': argv, 'args': container['args'], 'env': env, 'exit_code': None, 'log': log}

    def tail(self, name: str, lines: int = 15) -> str:
        text = Path(self.pods[name]['log']).read_text(errors='replace')
        return f'{name}: ' + '\n'.join(text.splitlines()[-lines:])


@pytest.mark.slow
def test_the_pytorchjob_pods_train_in_the_image(image, s3_env, bucket, tmp_path):
    started = time.monotonic()
    data_meta = data_prep.run(GEN, bucket, 'kd', workdir=tmp_path / 'prep')
    layout = RunLayout.from_root(data_meta['run_root'])
    ckpt = random_teacher(int(data_meta['num_classes']), tmp_path / 'teacher.pth')
    teacher = teacher_step.run(
        layout.root, ckpt, s3.sha256_file(ckpt), kd_config=KD_CONFIG, num_classes=3
    )
    # the chart's S3 Secret (video-kd-s3-credentials, its default keys): what the pods get
    secrets = {
        'video-kd-s3-credentials': {
            'AWS_ACCESS_KEY_ID': ACCESS_KEY,
            'AWS_SECRET_ACCESS_KEY': SECRET_KEY,
        }
    }
    (tmp_path / 'pods').mkdir()
    cluster = PodmanPyTorchJob(image, secrets, tmp_path / 'pods')
    prepared = time.monotonic() - started
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('KUBERNETES_SERVICE_HOST', '10.96.0.1')  # the step runs in a pod
        patch.setattr(backends, 'run_training', cluster.run)
        meta = train_step.run(
            data_meta,
            teacher,
            KD_CONFIG,
            TrainOptions(max_epochs=1, cfg_options=list(TINY_CFG_OPTIONS)),
            training_backend='pytorchjob',
            image=image,
            num_workers=NODES,
        )
    took = time.monotonic() - started

    # the pods were the manifest's: one container each, its command, args and env
    replicas = cluster.manifest['spec']['pytorchReplicaSpecs']
    assert sorted(replicas) == ['Master', 'Worker'] and replicas['Worker']['replicas'] == 1
    assert len(cluster.pods) == NODES
    for (pod_name, pod), rank in zip(cluster.pods.items(), range(NODES), strict=True):
        assert pod['exit_code'] == 0, cluster.tail(pod_name)
        assert pod['env']['PET_NODE_RANK'] == str(rank) and pod['env']['PET_NNODES'] == '2'
        assert pod['env']['AWS_ACCESS_KEY_ID'] == ACCESS_KEY  # from the Secret
        assert pod['env']['S3_ENDPOINT_URL'] == s3_env  # the step pod's S3 ConfigMap
        assert pod['args'][:2] == ['-m', 'video_kd.distill.train_pod']
        assert pod['argv'][-len(pod['args']) - 1 :] == [image, *pod['args']]
    master_log = Path(cluster.pods[f'{meta["job_name"]}-master-0']['log']).read_text()
    # one world of 2 processes across the two containers; validation gathered both ranks'
    # results (over the process group: the containers share no file system)
    assert 'Distributed launcher: pytorch' in master_log and 'GPU number: 2' in master_log
    assert 'Epoch(val) [1][1/1]' in master_log and 'done: checkpoints in' in master_log

    # what the train step checks after a job, and what it recorded
    (checkpoint,) = list_checkpoints(layout)
    assert checkpoint.endswith('/train/checkpoints/epoch_1.pth')
    assert meta['s3_uri'] == checkpoint and meta['epochs'] == 1 and meta['backend'] == 'pytorchjob'
    entry = Manifest.load(layout).find(checkpoint)
    assert s3.sha256_file(s3.download_file(checkpoint, tmp_path / 'epoch_1.pth')) == entry.sha256
    logs = s3.list_uris(layout.uri('train', LOG_DIR) + '/')
    assert any(uri.endswith('.log') for uri in logs), logs
    record = s3.read_json(common.output_uri(layout, 'train'))
    assert record['parameters']['num_workers'] == NODES
    assert record['parameters']['image'] == image
    print(
        f'\nPyTorchJob pods in the image: {cluster.took:.0f}s; data prep and teacher '
        f'{prepared:.0f}s; {took:.0f}s in all'
    )
