"""The deployable student, end to end on a real tiny run: ONNX export and its parity with
PyTorch, the plots and their HTML page in a real headless Chromium, the model card.

One KD training (conftest's kd_training: tsm_r50_tiny teacher -> tsm_mobilenetv2_tiny,
2 epochs, validation every epoch so the curves have points) feeds every test here; the videos are the generated MP4s
of conftest's kd_data, decoded by decord through the config's own test pipeline.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml
from conftest import run_module

from video_kd.deploy import export, model_card, plots, serving

KD_CONFIG = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
STUDENT_CONFIG = 'tsm_mobilenetv2_tiny'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMIUM_FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]


@pytest.mark.slow
def test_onnx_reproduces_the_pytorch_student_on_the_val_clips(exported, kd_data, eval_metrics):
    out, result = exported
    parity = result['parity']
    assert parity['num_clips'] == eval_metrics['num_val'] == 6
    assert parity['max_abs_logit_diff'] <= export.DEFAULT_TOLERANCE
    assert parity['top1_acc_onnx'] == parity['top1_acc_pytorch']
    # the evaluation step's number (MMAction2's test loop), reproduced by ONNX Runtime
    assert parity['top1_acc_onnx'] == pytest.approx(eval_metrics['student']['top1_acc'])
    assert parity['batch_sizes'] == [2, 4]  # the same graph ran at two batch sizes
    assert json.loads((out / export.PARITY_NAME).read_text()) == parity
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [export.ONNX_NAME, export.TORCHSCRIPT_NAME, export.PREPROCESS_NAME, export.PARITY_NAME]
    )


def mmaction_predict(model, cfg, count):
    """(packed inputs, pred_score) of the first ``count`` val clips by MMAction2's own path:
    dataset -> pseudo_collate -> test_step (data_preprocessor, recognizer, average_clip)."""
    from mmaction.registry import DATASETS
    from mmengine.dataset import pseudo_collate

    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    items = [dataset[i] for i in range(count)]
    with torch.no_grad():
        samples = model.test_step(pseudo_collate(items))
    inputs = torch.stack([item['inputs'].float() for item in items])
    return inputs, torch.stack([s.pred_score for s in samples]).numpy()


@pytest.mark.slow
def test_the_graph_takes_any_batch_and_gives_mmaction2_scores(exported, kd_student, kd_data):
    out, _ = exported
    session = export.ort_session(out / export.ONNX_NAME)
    model, cfg, classes = export.load_student(KD_CONFIG, kd_student[1], kd_data)
    for size in (1, 3):
        inputs, expected = mmaction_predict(model, cfg, size)
        scores, logits = session.run(None, {export.INPUT_NAME: inputs.numpy()})
        assert scores.shape == (size, len(classes)) and logits.shape == (size, 1, len(classes))
        np.testing.assert_allclose(scores, expected, atol=1e-5)
    traced = torch.jit.load(str(out / export.TORCHSCRIPT_NAME))
    with torch.no_grad():
        np.testing.assert_allclose(traced(inputs)[0].numpy(), expected, atol=1e-5)


@pytest.mark.slow
def test_preprocess_json_says_what_happens_outside_the_graph(exported):
    out, result = exported
    spec = json.loads((out / export.PREPROCESS_NAME).read_text())
    assert spec['input']['shape'] == ['batch', 8, 3, 56, 56] == result['input_shape']
    assert spec['input']['layout'] == 'N x views x C x H x W'
    assert spec['inside_graph']['normalize']['mean'] == [123.675, 116.28, 103.53]
    assert spec['outside_graph']['frame_sampling'] == {
        'clip_len': 1,
        'frame_interval': 1,
        'num_clips': 8,
        'test_mode': True,
    }
    assert [t['type'] for t in spec['outside_graph']['test_pipeline']][-2:] == [
        'FormatShape',
        'PackActionInputs',
    ]
    assert spec['classes'] == result['classes'] and len(spec['classes']) == 3


@pytest.mark.slow
def test_a_tampered_graph_fails_the_parity_check(exported, kd_student, kd_data, tmp_path):
    import onnx
    from onnx import numpy_helper

    out, _ = exported
    graph = onnx.load(str(out / export.ONNX_NAME))
    bias = next(t for t in graph.graph.initializer if 'fc_cls.bias' in t.name)
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    onnx.save(graph, str(tmp_path / 'tampered.onnx'))
    model, cfg, _ = export.load_student(KD_CONFIG, kd_student[1], kd_data)
    parity = export.compare_on_clips(
        export.RecognizerScores(model).eval(),
        export.ort_session(tmp_path / 'tampered.onnx'),
        export.iter_val_clips(cfg),
    )
    assert parity['max_abs_logit_diff'] == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(export.ParityError, match=r'max \|logit difference\| 0\.5 > tolerance'):
        export.check_parity(parity, export.DEFAULT_TOLERANCE)


@pytest.mark.slow
def test_cli_exports_and_never_overwrites(kd_student, kd_data, tmp_path):
    out = tmp_path / 'cli'
    args = [KD_CONFIG, kd_student[1], '--data-root', kd_data, '--out-dir', out, '--max-clips', 3]
    first = run_module('video_kd.deploy.export', *args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip().splitlines()[-1] == str(out / export.ONNX_NAME)
    assert json.loads((out / export.PARITY_NAME).read_text())['num_clips'] == 3
    before = (out / export.ONNX_NAME).read_bytes()
    again = run_module('video_kd.deploy.export', *args)
    assert again.returncode == 2
    assert (
        again.stderr.strip().splitlines()[-1].startswith('error: ')
        and 'already holds' in again.stderr
    )
    assert (out / export.ONNX_NAME).read_bytes() == before


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_is_one_line(tiny_teacher, kd_data, tmp_path):
    result = run_module(
        'video_kd.deploy.export',
        STUDENT_CONFIG,
        tiny_teacher,
        '--data-root',
        kd_data,
        '--out-dir',
        tmp_path / 'o',
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: checkpoint') and 'does not fit the student' in last
    assert not (tmp_path / 'o').exists()


# --------------------------------------------------------------------------- plots + HTML


@pytest.fixture(scope='session')
def report(kd_student, eval_metrics, tmp_path_factory):
    from video_kd.deploy.speed import measure_speed

    metrics = {**eval_metrics, 'baseline': dict(eval_metrics['student'], top1_acc=0.0)}
    speed = measure_speed(KD_CONFIG, 3, {'run': (8, 3, 56, 56)}, batch=2, repeats=1)
    out = tmp_path_factory.mktemp('report')
    return plots.make_report(out, metrics=metrics, log_root=kd_student[0], speed=speed), speed


@pytest.mark.slow
def test_curves_come_from_the_runs_own_logs(kd_student):
    curves = plots.training_curves(kd_student[0])
    assert set(curves) == {'student loss', 'distill loss', 'student val top-1', 'teacher val top-1'}
    assert all(list(points) == [1, 2] for points in curves.values())
    assert all(v > 0 for v in curves['distill loss'].values())


@pytest.mark.slow
def test_pngs_are_real_images(report):
    from PIL import Image

    written, _ = report
    for key in ('curves', 'confusion', 'per_class', 'accuracy_latency'):
        with Image.open(written[key]) as image:
            assert image.format == 'PNG' and min(image.size) > 300
            assert np.asarray(image.convert('L')).std() > 10  # not blank


@pytest.mark.slow
def test_html_is_self_contained(report):
    page = report[0]['html'].read_text()
    assert page.count('src="data:image/png;base64,') == 4
    for outside in ('http://', 'https://', '<script', '<link', '@import', 'url('):
        assert outside not in page


def chromium_screenshot(page, tmp_path, name='shot.png'):
    """Render ``page`` in headless Chromium (offline, new empty profile); the RGB pixels."""
    from PIL import Image

    shot = tmp_path / name
    profile = tmp_path / f'profile_{name}'
    profile.mkdir()
    subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f'--user-data-dir={profile}',
            f'--screenshot={shot}',
            '--window-size=1200,2600',
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as image:
        return np.asarray(image.convert('RGB')).astype(int)


def rendered_plots(pixels) -> int:
    """How many strongly coloured pixels the page shows: the plots' lines, markers and heat
    map are the only saturated colour on it (text and tables are grey)."""
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    return int((saturation > 80).sum())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason='chromium not installed (apt-get install chromium)')
def test_the_html_page_renders_in_a_real_browser(report, tmp_path):
    pixels = chromium_screenshot(report[0]['html'], tmp_path)
    assert pixels.std() > 20, 'the page rendered blank'
    assert rendered_plots(pixels) > 5000, 'the plots did not render'
    # the same check on a page whose images are broken fails: it can tell
    broken = tmp_path / 'broken.html'
    broken.write_text(report[0]['html'].read_text().replace('base64,iVBOR', 'base64,AAAAA'))
    assert rendered_plots(chromium_screenshot(broken, tmp_path, 'broken.png')) < 500


@pytest.mark.slow
def test_model_card_from_the_run(exported, eval_metrics, report):
    out, result = exported
    card = model_card.build_model_card(
        run_id='test-run',
        kd_config=KD_CONFIG,
        student_config=STUDENT_CONFIG,
        metrics=eval_metrics,
        parity=result['parity'],
        preprocess=json.loads((out / export.PREPROCESS_NAME).read_text()),
        speed=report[1],
        lineage=tiny_lineage(),
    )
    paths = model_card.write_model_card(card, out.parent / 'card')
    assert json.loads(paths['json'].read_text())['run_id'] == 'test-run'
    text = paths['markdown'].read_text()
    assert '| export parity | yes |' in text and '| ONNX top-1 = PyTorch top-1 | yes |' in text
    assert 'KD helps | **no** | no student-alone baseline' in text
    assert 'model.architecture.backbone.pretrained`: none (random init)' in text
    assert f'{result["parity"]["num_clips"]} val clips' in text


# --------------------------------------------------------------------------- the step's call


def tiny_lineage():
    return model_card.lineage(
        teacher_url='s3://bucket/teacher.pth',
        teacher_sha256='ab' * 32,
        dataset_uri='generate://',
        dataset_manifest_sha256='cd' * 32,
        pretrained=model_card.pretrained_weights(KD_CONFIG),
        pipeline_parameters={'max_epochs': 2},
        code_version='0.1.0+test',
        image='ghcr.io/kubeflow-video-kd/video-kd:0.1.0',
    )


@pytest.mark.slow
def test_package_student_writes_everything_the_export_step_publishes(
    kd_student, kd_data, eval_metrics, tmp_path
):
    from video_kd.deploy.deployable import package_student

    result = package_student(
        run_id='test-run',
        kd_config=KD_CONFIG,
        student_config=STUDENT_CONFIG,
        checkpoint=kd_student[1],
        data_root=kd_data,
        log_root=kd_student[0],
        metrics=eval_metrics,
        lineage=tiny_lineage(),
        out_dir=tmp_path / 'export',
        speed_repeats=1,
        speed_shapes={'run': (8, 3, 56, 56)},
        uri_of=lambda name: f's3://b/p/test-run/export/{name}',
        image='ghcr.io/x/video-kd:1',
    )
    names = sorted(p.name for p in (tmp_path / 'export').iterdir())
    triton = f'triton/{serving.serving_name(KD_CONFIG)}'
    serving_files = [f'{triton}/1/model.onnx', f'{triton}/config.pbtxt', f'{triton}/labels.txt']
    assert 'triton' in names and set(serving_files) <= set(result['files'])
    assert (
        sorted(n for n in names if n != 'triton')
        == sorted(set(result['files']) - set(serving_files))
        == sorted(
            [
                'inferenceservice.yaml',
                'student.onnx',
                'student.torchscript.pt',
                'preprocess.json',
                'parity.json',
                'speed.json',
                'training_curves.png',
                'confusion_matrix.png',
                'accuracy_vs_latency.png',
                'per_class_accuracy.png',
                'per_class.csv',
                'report.html',
                'model_card.json',
                'model_card.md',
            ]
        )
    )
    card_files = result['card']['export']['files']
    assert card_files['student.onnx']['uri'] == 's3://b/p/test-run/export/student.onnx'
    service = yaml.safe_load((tmp_path / 'export' / 'inferenceservice.yaml').read_text())
    (container,) = service['spec']['predictor']['containers']
    assert container['env'] == [{'name': 'STORAGE_URI', 'value': 's3://b/p/test-run/export'}]
    assert len(card_files['student.onnx']['sha256']) == 64
    metrics = result['kfp_metrics']
    assert metrics['onnx_top1_acc'] == pytest.approx(eval_metrics['student']['top1_acc'])
    assert metrics['flop_ratio_run'] > 5 and metrics['speedup_onnxruntime_latency_run'] > 0
    assert all(isinstance(v, float | int) for v in metrics.values())
    assert result['markdown'].read_text().startswith('# Model card')


@pytest.mark.slow
def test_package_student_without_a_training_log_writes_nothing(
    kd_student, kd_data, eval_metrics, tmp_path
):
    from video_kd.deploy.deployable import package_student

    with pytest.raises(plots.PlotError, match='no training log under'):
        package_student(
            run_id='test-run',
            kd_config=KD_CONFIG,
            student_config=STUDENT_CONFIG,
            checkpoint=kd_student[1],
            data_root=kd_data,
            log_root=tmp_path / 'no-logs',
            metrics=eval_metrics,
            lineage=tiny_lineage(),
            out_dir=tmp_path / 'export',
        )
    assert not (tmp_path / 'export').exists()
