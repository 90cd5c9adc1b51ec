"""Fast checks of the export library: a student with an op ONNX lacks, the parity rule,
the speed arithmetic, the model card and the curves' parsing of mmengine's scalars.json."""

from __future__ import annotations

import json

import pytest
import torch

from video_kd.deploy import export, model_card, plots, speed
from video_kd.openmmlab.config import CONFIG_DIR

# --------------------------------------------------------------------------- export errors


@pytest.fixture
def cummax_student(tmp_path):
    """A student config whose head uses torch.cummax (no ONNX symbolic in any opset)
    and a checkpoint that fits it exactly."""
    from mmaction.models.heads import TSMHead
    from mmaction.registry import MODELS

    from video_kd.deploy.export import load_student  # noqa: F401  (registers mmaction first)

    @MODELS.register_module(force=True)
    class CummaxTSMHead(TSMHead):
        def forward(self, x, num_segs, **kwargs):
            return torch.cummax(super().forward(x, num_segs, **kwargs), dim=-1)[0]

    config = tmp_path / 'cummax_student.py'
    config.write_text(
        f"_base_ = '{CONFIG_DIR / 'tsm_mobilenetv2_tiny.py'}'\n"
        "model = dict(cls_head=dict(type='CummaxTSMHead'))\n"
    )
    return config


def save_fitting_checkpoint(config, data_root, path):
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    from video_kd.data.data_stream import set_data_root
    from video_kd.openmmlab.config import load_config
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    init_default_scope('mmaction')
    cfg = load_config(str(config))
    set_data_root(cfg, data_root)
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict()}, path)
    return path


def test_a_student_with_an_op_onnx_lacks_is_one_line(cummax_student, kd_data, tmp_path):
    ckpt = save_fitting_checkpoint(cummax_student, kd_data, tmp_path / 'cummax.pth')
    out = tmp_path / 'out'
    with pytest.raises(export.ExportError) as error:
        export.export_student(str(cummax_student), ckpt, kd_data, out)
    message = str(error.value)
    assert message.startswith('the student does not export to ONNX (opset 17)')
    assert "'aten::cummax'" in message and '\n' not in message
    assert not out.exists() or not any(out.iterdir())  # nothing half-written left


def build_recognizer(config):
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    from video_kd.openmmlab.config import load_config
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    init_default_scope('mmaction')
    recognizer = MODELS.build(load_config(str(config)).model)
    return export.RecognizerScores(recognizer).eval()


def test_a_teacher_that_does_not_export_is_timed_in_pytorch_only(cummax_student, caplog):
    """Regression: a teacher that failed ONNX export during the speed measurement failed the
    step with 'the student does not export'. Speed is a report: the teacher is timed in
    PyTorch eager, one warning line names it, and nothing downstream breaks."""
    models = {
        'teacher': build_recognizer(cummax_student),  # torch.cummax: no ONNX symbolic
        'student': build_recognizer('tsm_mobilenetv2_tiny'),
    }
    measured = speed.measure_pair(models, (8, 3, 56, 56), batch=2, repeats=1, threads=1)
    assert set(measured['onnx_failed']) == {'teacher'}
    assert measured['onnx_failed']['teacher'].startswith(
        'the teacher does not export to ONNX (opset 17)'
    )
    assert set(measured['models']['teacher']) >= {'pytorch'}
    assert 'onnxruntime' not in measured['models']['teacher']
    assert 'onnxruntime' in measured['models']['student']
    assert set(measured['speedup']) == {'pytorch'}
    warnings = [r for r in caplog.records if r.levelname == 'WARNING' and 'teacher' in r.message]
    assert len(warnings) == 1 and '\n' not in warnings[0].getMessage()
    assert 'timed in PyTorch eager only' in warnings[0].getMessage()
    result = {'kd_config': 'x', 'num_classes': 5, 'shapes': {'seed': measured, 'run': measured}}
    metrics = speed.kfp_metrics(result)
    assert 'teacher_pytorch_latency_ms_seed' in metrics
    assert 'teacher_onnxruntime_latency_ms_seed' not in metrics
    assert 'speedup_onnxruntime_latency_seed' not in metrics
    built = card(speed=result)
    (check,) = [c for c in built['review'] if c['check'].startswith('student >= 5x faster')]
    assert not check['ok'] and check['detail'].startswith('not measured: the teacher does not')
    text = model_card.render_markdown(built)
    assert 'ONNX Runtime not timed (PyTorch only): seed: the teacher does not export' in text
    assert '| n/a |' in text
    table = plots.speed_table(result)
    assert 'onnxruntime' in table and 'n/a' in table
    points = plots.accuracy_latency_points(METRICS, result)
    assert (
        points[0]['latency_ms'] == measured['models']['teacher']['pytorch']['latency_ms']['median']
    )  # like with like: PyTorch for every model when one has no ONNX


def test_export_settings_out_of_range_are_refused_before_any_work(kd_data, tmp_path):
    from video_kd.core.checks import InvalidInputError

    for kwargs, match in (
        ({'tolerance': -1.0}, '--tolerance must be >= 0, got -1'),
        ({'tolerance': float('nan')}, '--tolerance must be a finite number'),
        ({'max_clips': 0}, '--max-clips must be >= 1, got 0'),
        ({'parity_clips': 0}, 'parity_clips must be >= 1, got 0'),
    ):
        with pytest.raises(InvalidInputError, match=match):
            export.export_student('no_such_config', tmp_path / 'x.pth', kd_data, tmp_path, **kwargs)
    with pytest.raises(InvalidInputError, match='speed repeats must be >= 1, got 0'):
        speed.measure_pair({}, (8, 3, 56, 56), repeats=0)


def test_missing_checkpoint_and_unknown_config_are_export_errors(kd_data, tmp_path):
    with pytest.raises(export.ExportError, match='does not exist'):
        export.export_student('tsm_mobilenetv2_tiny', tmp_path / 'nope.pth', kd_data, tmp_path)
    with pytest.raises(export.ExportError, match='unknown config'):
        export.export_student('no_such_config', tmp_path / 'nope.pth', kd_data, tmp_path)


PARITY = dict(
    num_clips=10,
    max_abs_logit_diff=2e-6,
    top1_agreement=1.0,
    top1_acc_pytorch=0.7,
    top1_acc_onnx=0.7,
    tolerance=1e-3,
    opset=17,
)


def test_parity_rule():
    export.check_parity(PARITY, 1e-3)
    export.check_parity(PARITY, 1e-3, reference_top1=0.7)
    with pytest.raises(export.ParityError, match='> tolerance 1e-06'):
        export.check_parity(PARITY, 1e-6)
    with pytest.raises(export.ParityError, match='tolerance'):
        export.check_parity({**PARITY, 'max_abs_logit_diff': float('nan')}, 1e-3)
    with pytest.raises(export.ParityError, match="differs from the PyTorch student's"):
        export.check_parity({**PARITY, 'top1_acc_onnx': 0.6}, 1e-3)
    with pytest.raises(export.ParityError, match=r"evaluation step's student top-1 0\.8000"):
        export.check_parity(PARITY, 1e-3, reference_top1=0.8)


# --------------------------------------------------------------------------- speed arithmetic


def fake_seconds(teacher: float, student: float, rounds: int = 3):
    return {
        (name, engine, batch): [base * batch * (1 + 0.01 * r) for r in range(rounds)]
        for name, base in (('teacher', teacher), ('student', student))
        for engine in speed.ENGINES
        for batch in (1, 8)
    }


def test_speed_tables_and_ratios():
    seconds = fake_seconds(teacher=0.5, student=0.1)
    table = speed.speed_table(seconds, 8)
    assert table['teacher']['pytorch']['latency_ms']['median'] == pytest.approx(505)
    assert table['student']['onnxruntime']['throughput_clips_per_s']['median'] == pytest.approx(
        8 / 0.808
    )
    ratios = speed.speedups(seconds, 8)
    assert ratios['onnxruntime']['latency']['median'] == pytest.approx(5.0)
    assert ratios['pytorch']['throughput']['min'] == pytest.approx(5.0)


def synthetic_speed():
    seconds = fake_seconds(teacher=0.5, student=0.08)
    table = speed.speed_table(seconds, 8)
    table['teacher'].update(params=24_000_000, flops=33_000_000_000)
    table['student'].update(params=2_700_000, flops=2_500_000_000)
    result = {
        'clip_shape': [8, 3, 224, 224],
        'batch': 8,
        'repeats': 3,
        'threads': 2,
        'models': table,
        'speedup': speed.speedups(seconds, 8),
        'flop_ratio': 13.2,
        'param_ratio': 8.9,
    }
    return {'kd_config': 'x', 'num_classes': 3, 'shapes': {'seed': result, 'run': result}}


def test_kfp_metrics_are_flat_numbers():
    metrics = speed.kfp_metrics(synthetic_speed())
    assert metrics['speedup_onnxruntime_latency_seed'] == pytest.approx(6.25)
    assert metrics['teacher_gflops_run'] == 33.0 and metrics['student_params_m'] == 2.7
    assert all(isinstance(v, float | int) for v in metrics.values())


# --------------------------------------------------------------------------- model card


METRICS = {
    'run_id': 'r1',
    'num_val': 40,
    'classes': ['a', 'b'],
    'student': {'top1_acc': 0.8, 'top5_acc': 1.0, 'mean_class_acc': 0.8},
    'teacher': {'top1_acc': 0.9, 'top5_acc': 1.0, 'mean_class_acc': 0.9},
    'baseline': {'top1_acc': 0.5, 'top5_acc': 1.0, 'mean_class_acc': 0.5},
    'kd_gain': {'top1_acc': 0.3, 'top5_acc': 0.0, 'mean_class_acc': 0.3},
    'confusion_matrix': [[18, 2], [6, 14]],
}
PREPROCESS = {
    'input': {
        'name': 'inputs',
        'shape': ['batch', 8, 3, 56, 56],
        'layout': 'N x views x C x H x W',
    },
    'inside_graph': {'average_clips': 'prob'},
    'outside_graph': {
        'frame_sampling': {'num_clips': 8},
        'test_pipeline': [{'type': 'DecordInit'}, {'type': 'CenterCrop'}],
    },
}


def card(**overrides):
    args = dict(
        run_id='r1',
        kd_config='kd_logits_tsm-res50_tsm-mobilenetv2_tiny',
        student_config='tsm_mobilenetv2_tiny',
        metrics=METRICS,
        parity=PARITY,
        preprocess=PREPROCESS,
        speed=synthetic_speed(),
        lineage=model_card.lineage(
            teacher_url='https://example.invalid/t.pth',
            teacher_sha256='0' * 64,
            dataset_uri='s3://b/datasets/x',
            dataset_manifest_sha256='1' * 64,
            pretrained={'model.backbone.pretrained': None},
            pipeline_parameters={'max_epochs': 20, 'kd_config': 'k'},
            code_version='abc123',
            image='img:1',
        ),
        files={'onnx': {'uri': 's3://b/p/r1/export/student.onnx', 'sha256': 'f' * 64, 'bytes': 9}},
    )
    return model_card.build_model_card(**{**args, **overrides})


def test_model_card_holds_what_a_reviewer_needs(tmp_path):
    built = card()
    checks = {c['check']: c for c in built['review']}
    assert all(c['ok'] for name, c in checks.items() if name != 'validation set size')
    assert not checks['validation set size']['ok']  # 40 videos: said plainly
    assert checks['student >= 5x faster (ONNX Runtime, seed size)']['detail'].startswith('6.25x')
    text = model_card.write_model_card(built, tmp_path)['markdown'].read_text()
    for needle in (
        '| student (KD) | 0.8000 | 1.0000 | 0.8000 |',
        '| student alone (no KD) | 0.5000 |',
        '**KD gain** (student with KD minus student alone): top-1 +0.3000',
        'teacher: `https://example.invalid/t.pth` (sha256 `' + '0' * 64,
        'manifest sha256 `' + '1' * 64,
        '`model.backbone.pretrained`: none (random init)',
        'code version: `abc123`; image: `img:1`',
        '| seed | onnxruntime | 6.25x |',
        's3://b/p/r1/export/student.onnx',
        'DecordInit -> CenterCrop',
        '0: `a`, 1: `b`',
        '"max_epochs": 20',
        'Latency: batch 1; throughput: batch 8;',
    ):
        assert needle in text, needle


def test_model_card_names_the_throughput_batch_that_was_timed():
    """speed_batch_size=1 (run-local's) times batch 1 alone: the card says so, not 8."""
    measured = synthetic_speed()
    for result in measured['shapes'].values():
        result['batch'] = 1
    text = model_card.render_markdown(card(speed=measured))
    assert 'Latency: batch 1; throughput: batch 1;' in text


def test_model_card_says_no_when_parity_or_gain_fail():
    built = card(
        parity={**PARITY, 'max_abs_logit_diff': 0.5},
        metrics={**METRICS, 'kd_gain': {'top1_acc': -0.1, 'top5_acc': 0, 'mean_class_acc': 0}},
        speed=None,
    )
    failed = {c['check'] for c in built['review'] if not c['ok']}
    assert {'export parity', 'KD helps'} <= failed
    assert 'Not measured in this run.' in model_card.render_markdown(built)


def test_model_card_refuses_metrics_without_a_student():
    with pytest.raises(model_card.ModelCardError, match='no student accuracy'):
        card(metrics={'classes': ['a']})


def test_pretrained_weights_say_random_init_offline():
    weights = model_card.pretrained_weights('kd_logits_tsm-res50_tsm-mobilenetv2_tiny')
    assert weights['model.architecture.backbone.pretrained'] is None
    assert weights['model.teacher.backbone.pretrained'] is None


# --------------------------------------------------------------------------- curves


def write_scalars(root, name, records):
    path = root / name / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    path.write_text('\n'.join(json.dumps(r) for r in records) + '\n')
    return path


def train_record(epoch, it, cls, dist):
    return {
        'lr': 0.001,
        'loss': cls + dist,
        'student.loss_cls': cls,
        'distill.loss_dist': dist,
        'epoch': epoch,
        'iter': it,
        'step': it,
    }


def val_record(epoch, student, teacher):
    return {'acc/top1': student, 'teacher.acc/top1': teacher, 'acc/top5': 1.0, 'step': epoch}


def test_curves_merge_attempts_and_average_epochs(tmp_path):
    # first attempt: epochs 1-2, killed in epoch 2; the resumed attempt redoes epoch 2
    write_scalars(
        tmp_path,
        '20260101_000000',
        [
            train_record(1, 1, 2.0, 1.0),
            train_record(1, 2, 1.0, 0.5),
            val_record(1, 0.4, 0.9),
            train_record(2, 3, 9.0, 9.0),
        ],
    )
    write_scalars(
        tmp_path,
        '20260101_010000',
        [train_record(2, 3, 0.8, 0.2), val_record(2, 0.6, 0.9)],
    )
    curves = plots.training_curves(tmp_path)
    assert curves['student loss'] == {1: 1.5, 2: 0.8}
    assert curves['distill loss'] == {1: 0.75, 2: 0.2}
    assert curves['student val top-1'] == {1: 0.4, 2: 0.6}
    assert curves['teacher val top-1'] == {1: 0.9, 2: 0.9}


def test_a_missing_or_broken_log_is_one_line(tmp_path):
    with pytest.raises(plots.PlotError, match='no training log under'):
        plots.training_curves(tmp_path)
    path = write_scalars(tmp_path, 't', [val_record(1, 0.5, 0.5)])
    path.write_text('{"acc/top1": 0.5, "step": 1}\nnot json\n')
    with pytest.raises(plots.PlotError, match=r'scalars.json:2 is not a JSON line'):
        plots.training_curves(tmp_path)
    with pytest.raises(plots.PlotError, match='no training log under'):
        plots.make_report(tmp_path / 'out', metrics=METRICS, log_root=tmp_path / 'nope')
    assert not (tmp_path / 'out').exists()  # nothing drawn before the log was found


def test_report_without_speed_has_no_latency_plot(tmp_path):
    write_scalars(tmp_path / 'logs', 't', [train_record(1, 1, 1.0, 0.5), val_record(1, 0.5, 0.8)])
    written = plots.make_report(tmp_path / 'out', metrics=METRICS, log_root=tmp_path / 'logs')
    assert set(written) == {'curves', 'confusion', 'per_class', 'per_class_csv', 'html'}
    assert written['html'].read_text().count('data:image/png;base64,') == 3


def test_the_student_alone_curves_are_drawn_beside_the_kd_students(tmp_path):
    write_scalars(tmp_path / 'kd', 't', [train_record(1, 1, 1.0, 0.5), val_record(1, 0.5, 0.8)])
    alone = [{'loss_cls': 2.0, 'loss': 2.0, 'epoch': 1, 'iter': 1, 'step': 1}]
    write_scalars(tmp_path / 'alone', 't', [*alone, {'acc/top1': 0.25, 'step': 1}])
    curves = plots.baseline_curves(tmp_path / 'alone')
    assert curves == {'student alone loss': {1: 2.0}, 'student alone val top-1': {1: 0.25}}
    kd = plots.training_curves(tmp_path / 'kd')
    both = plots.plot_training_curves({**kd, **curves}, tmp_path / 'both.png')
    plain = plots.plot_training_curves(kd, tmp_path / 'plain.png')
    assert both.read_bytes() != plain.read_bytes()  # one more line in each plot


def test_the_parity_sample_is_bounded_seeded_and_sorted():
    sample = export.parity_sample(19_796, 32)
    assert len(sample) == 32 == len(set(sample)) and sample == sorted(sample)
    assert sample == export.parity_sample(19_796, 32)  # the same clips on every run
    assert sample != export.parity_sample(19_796, 32, seed=1)
    assert export.parity_sample(6, 32) == export.parity_sample(6, None) == list(range(6))
