"""`video-kd serve` for real: the exported tiny student served by KServe's ModelServer on
127.0.0.1, the generated MP4s of kd_data sent over HTTP (v2 base64 and s3:// URIs, v1 raw bytes,
b64 and http:// URIs from a local file server),
the answers compared with the PyTorch student's scores on the same videos.

Also what export writes for serving: the InferenceService against KServe's own CRD schema
(tests/data/crds, strict), the Triton repository against the ONNX graph, and the recipe
(preprocess.json) free of this project's private names.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from conftest import KD_CONFIG, free_port
from crd_schema import CRDS, problems
from s3_servers import ACCESS_KEY, SECRET_KEY

from video_kd.deploy import serving

ISVC_CRD = CRDS / 'serving.kserve.io_inferenceservices-v0.20.0.yaml'
NAME = 'tiny-student'
TOP_K = 3  # the tiny dataset's classes: every score comes back
STARTUP_SECONDS = 120  # mmaction + kserve imports on 2 loaded cores
# The first test here to run may build the session's KD training and export (conftest).
FIXTURES_TIMEOUT = 1800


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope='module')
def server(exported, s3_server, tmp_path_factory):
    """`video-kd serve` on the exported student, as a subprocess on a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp('serve') / 'serve.log'
    env = {
        **os.environ,
        'S3_ENDPOINT_URL': s3_server,
        'AWS_ACCESS_KEY_ID': ACCESS_KEY,
        'AWS_SECRET_ACCESS_KEY': SECRET_KEY,
        'AWS_DEFAULT_REGION': 'us-east-1',
        'AWS_CONFIG_FILE': os.devnull,
        'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
    }
    args = ['serve', str(exported[0]), '--model-name', NAME, '--http-port', str(port)]
    args += ['--no-grpc', '--top-k', str(TOP_K), '--threads', '1']
    with open(log, 'w') as out:
        process = subprocess.Popen(
            [sys.executable, '-m', 'video_kd.cli', *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f'http://127.0.0.1:{port}'
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f'the server exited:\n{log.read_text()[-3000:]}'
        try:
            if requests.get(f'{url}/v2/health/ready', timeout=2).json().get('ready'):
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f'not ready after {STARTUP_SECONDS}s:\n{log.read_text()[-3000:]}')


@pytest.fixture(scope='module')
def torch_scores(kd_student, kd_data) -> dict[str, np.ndarray]:
    """Val video path -> the PyTorch student's scores (MMAction2's test pipeline, eval mode)."""
    import torch
    from mmaction.registry import DATASETS

    from video_kd.deploy.export import RecognizerScores, load_student

    model, cfg, _ = load_student(KD_CONFIG, kd_student[1], kd_data)
    module = RecognizerScores(model).eval()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    scores = {}
    with torch.no_grad():
        for index in range(len(dataset)):
            clip = dataset[index]['inputs'].float().unsqueeze(0)
            scores[dataset.get_data_info(index)['filename']] = module(clip)[0][0].numpy()
    assert len(scores) == len(dataset) >= 2
    return scores


def _expected(scores: np.ndarray, classes: list[str]) -> tuple[list[str], np.ndarray]:
    order = np.argsort(-scores, kind='stable')[:TOP_K]
    return [classes[i] for i in order], scores[order]


def _check(labels, scores, expected_scores, classes):
    want_labels, want_scores = _expected(expected_scores, classes)
    assert labels == want_labels
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)


def _v2_request(videos: list[str]) -> dict:
    """An Open Inference Protocol request: one BYTES input of URIs or base64 strings."""
    return {
        'inputs': [{'name': 'video', 'shape': [len(videos)], 'datatype': 'BYTES', 'data': videos}]
    }


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


# --------------------------------------------------------------------------- serving


@pytest.mark.slow
@pytest.mark.timeout(FIXTURES_TIMEOUT)
def test_v2_base64_batch_and_v1_raw_bytes_equal_the_pytorch_student(server, torch_scores, exported):
    classes = exported[1]['classes']
    paths = sorted(torch_scores)
    request = _v2_request([_b64(p) for p in paths])
    answer = requests.post(f'{server}/v2/models/{NAME}/infer', json=request, timeout=120)
    assert answer.status_code == 200, answer.text
    outputs = {o['name']: o for o in answer.json()['outputs']}
    assert outputs['labels']['shape'] == outputs['scores']['shape'] == [len(paths), TOP_K]
    labels = np.array(outputs['labels']['data']).reshape(len(paths), TOP_K)
    scores = np.array(outputs['scores']['data'], dtype=np.float32).reshape(len(paths), TOP_K)
    for row, path in enumerate(paths):
        _check(list(labels[row]), scores[row], torch_scores[path], classes)
    raw = requests.post(
        f'{server}/v1/models/{NAME}:predict',
        data=Path(paths[-1]).read_bytes(),
        headers={'Content-Type': 'video/mp4'},
        timeout=120,
    )
    assert raw.status_code == 200, raw.text
    (prediction,) = raw.json()['predictions']
    _check(prediction['labels'], prediction['scores'], torch_scores[paths[-1]], classes)


@pytest.mark.slow
@pytest.mark.timeout(FIXTURES_TIMEOUT)
def test_v2_base64_and_s3_uri_and_v1_b64_and_https_uri(
    server, torch_scores, exported, bucket, http_server
):
    from video_kd.storage import s3

    classes = exported[1]['classes']
    first, second = sorted(torch_scores)[:2]
    uri = s3.upload_file(first, f's3://{bucket}/clips/first.mp4')
    b64 = _b64(second)
    answer = requests.post(
        f'{server}/v2/models/{NAME}/infer', json=_v2_request([uri, b64]), timeout=120
    )
    assert answer.status_code == 200, answer.text
    outputs = {o['name']: o['data'] for o in answer.json()['outputs']}
    for row, path in enumerate([first, second]):
        cut = slice(row * TOP_K, (row + 1) * TOP_K)
        _check(outputs['labels'][cut], outputs['scores'][cut], torch_scores[path], classes)

    (http_server.root / 'second.mp4').write_bytes(Path(second).read_bytes())
    instances = [{'b64': b64}, {'uri': http_server.url('second.mp4')}]
    answer = requests.post(
        f'{server}/v1/models/{NAME}:predict', json={'instances': instances}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    for prediction in answer.json()['predictions']:
        _check(prediction['labels'], prediction['scores'], torch_scores[second], classes)


@pytest.mark.slow
@pytest.mark.timeout(FIXTURES_TIMEOUT)
def test_an_undecodable_video_is_400_with_the_reason_and_serving_goes_on(server, torch_scores):
    predict = f'{server}/v1/models/{NAME}:predict'
    broken = base64.b64encode(b'\x00\x00\x00\x18ftypmp42 not a video').decode()
    answer = requests.post(predict, json={'instances': [{'b64': broken}]}, timeout=60)
    assert answer.status_code == 400
    assert answer.json()['error'].startswith('cannot decode the video: ')
    refused = requests.post(
        predict, json={'instances': [{'uri': 'file:///etc/passwd'}]}, timeout=60
    )
    assert refused.status_code == 400 and 'use s3:// or https://' in refused.json()['error']
    video = base64.b64encode(Path(sorted(torch_scores)[0]).read_bytes()).decode()
    again = requests.post(predict, json={'instances': [{'b64': video}]}, timeout=60)
    assert again.status_code == 200, again.text


@pytest.mark.slow
@pytest.mark.timeout(FIXTURES_TIMEOUT)
def test_health_and_prometheus_metrics(server, torch_scores):
    assert requests.get(f'{server}/v2/health/live', timeout=10).status_code == 200
    assert requests.get(f'{server}/v2/models/{NAME}/ready', timeout=10).json()['ready']
    video = base64.b64encode(Path(sorted(torch_scores)[0]).read_bytes()).decode()
    requests.post(f'{server}/v1/models/{NAME}:predict', json={'instances': [{'b64': video}]})
    metrics = requests.get(f'{server}/metrics', timeout=10).text
    for histogram in ('request_preprocess_seconds', 'request_predict_seconds'):
        assert f'{histogram}_count{{model_name="{NAME}"}}' in metrics


# --------------------------------------------------------------------------- what export writes


def test_the_inference_service_fits_kserves_crd_strictly():
    service = serving.inference_service(
        'tsm-student', 'ghcr.io/x/video-kd:1', 's3://b/p/run/export', service_account='sa'
    )
    assert problems(service, ISVC_CRD, 'v1beta1') == []
    (container,) = service['spec']['predictor']['containers']
    assert container['args'][:4] == ['serve', serving.MODEL_MOUNT, '--model-name', 'tsm-student']
    typo = {**service, 'spec': {'predictor': {'containres': []}}}
    assert problems(typo, ISVC_CRD, 'v1beta1')  # the strict schema refuses unknown fields


def test_serving_names_are_dns_labels():
    assert serving.serving_name(KD_CONFIG) == 'kd-logits-tsm-res50-tsm-mobilenetv2-tiny'
    assert serving.serving_name('3d_Model.py') == 'kd-3d-model'
    assert len(serving.serving_name('x' * 100)) <= 45


def test_the_recipe_names_no_private_io_backend():
    from video_kd.deploy.export import ExportError, public_pipeline
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    pipeline = [
        dict(type='DecordInit', io_backend='video_kd_s3', num_threads=1),
        dict(type='SampleFrames', clip_len=1, num_clips=8, test_mode=True),
        dict(type='PackActionInputs'),
    ]
    assert public_pipeline(pipeline)[0] == {'type': 'DecordInit', 'num_threads': 1}
    with pytest.raises(ExportError, match="'SeededViews' is not an MMAction2 one"):
        public_pipeline([dict(type='SeededViews', transforms=[], num_views=1)])


@pytest.mark.slow
@pytest.mark.timeout(FIXTURES_TIMEOUT)
def test_the_triton_repository_matches_the_onnx_graph(exported, tmp_path):
    _, result = exported
    written = serving.write_serving_files(
        tmp_path,
        Path(result['files']['onnx']),
        result['classes'],
        name='m',
        image='',
        storage_uri='',
    )
    assert sorted(written) == [
        'triton/m/1/model.onnx',
        'triton/m/config.pbtxt',
        'triton/m/labels.txt',
    ]
    config = (tmp_path / 'triton/m/config.pbtxt').read_text()
    views = result['input_shape'][1:]
    assert (
        f'name: "inputs"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, views))} ]'
        in config
    )
    classes = len(result['classes'])
    assert f'name: "scores"\n    data_type: TYPE_FP32\n    dims: [ {classes} ]' in config
    assert 'label_filename: "labels.txt"' in config
    assert (tmp_path / 'triton/m/labels.txt').read_text().split() == result['classes']


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_pipelines_export_holds_the_inference_service_and_triton_layout(pipeline_run, s3_env):
    from video_kd.storage import s3

    export_dir = f'{pipeline_run["run_root"]}/export'
    names = {uri.rsplit('/export/', 1)[1] for uri in s3.list_uris(export_dir + '/')}
    service = yaml.safe_load(s3.read_bytes(f'{export_dir}/{serving.INFERENCE_SERVICE_NAME}'))
    assert problems(service, ISVC_CRD, 'v1beta1') == []
    (container,) = service['spec']['predictor']['containers']
    assert container['env'] == [{'name': 'STORAGE_URI', 'value': export_dir}]
    name = service['metadata']['name']
    assert {f'triton/{name}/1/model.onnx', f'triton/{name}/config.pbtxt'} <= names
    # the run streamed its val videos from S3 through its own backend: the recipe says nothing
    recipe = s3.read_bytes(f'{export_dir}/preprocess.json').decode()
    assert 'video_kd' not in recipe and 'io_backend' not in recipe
