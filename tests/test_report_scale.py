"""The report at Kinetics-400 size: 400 classes with Kinetics-like names, per-sample
predictions of student, student alone and teacher drawn with a seed, every number of the
report computed from them as the evaluation computes it (``steps.report.summarise_metrics``
on each model's confusion matrix).  The HTML page is rendered in a real headless Chromium
(tests/test_export.py's helper) and checked: images loaded and within the size bound,
labels on the page, nothing blank; both Markdown reports stay within their bound.
"""

from __future__ import annotations

import csv
import html
import json
import random
import subprocess

import numpy as np
import pytest
from PIL import Image
from test_export import CHROMIUM, CHROMIUM_FLAGS, chromium_screenshot, rendered_plots
from test_export_units import PARITY, PREPROCESS, synthetic_speed, train_record, val_record

from video_kd.deploy import class_report, model_card, plots
from video_kd.steps.report import markdown_report, summarise_metrics

VERBS = (
    'playing', 'riding', 'cleaning', 'making', 'washing', 'throwing', 'catching', 'carrying',
    'folding', 'juggling', 'tying', 'painting', 'kicking', 'pushing', 'dunking', 'shaving',
    'brushing', 'massaging', 'peeling', 'building',
)  # fmt: skip
OBJECTS = (
    'basketball', 'mule', "person's head", 'cake', 'American football (not in game)',
    'knot (not on a tie)', 'windows', "baby's hair", 'paper airplane', 'snowman',
    'guitar (acoustic)', 'ice', 'dog', 'legs', "car's tires", 'potatoes', 'poker cards',
    'trampoline', 'sandcastle', 'hula hoop',
)  # fmt: skip
CLASSES = [f'{verb} {thing}' for verb in VERBS for thing in OBJECTS]  # 400, K400-like
VIDEOS_PER_CLASS = 5
MODEL_SKILL = {'student': 0.55, 'baseline': 0.35, 'teacher': 0.8}


def predictions(model: str, rng: random.Random) -> list[tuple[int, int]]:
    """(label, prediction) per val video.  Each class has a fixed difficulty and a fixed
    look-alike (its neighbour of the same verb), which takes most of its wrong answers:
    the confusions are structured, as real ones are."""
    pairs = []
    for label in range(len(CLASSES)):
        difficulty = ((label * 7919) % 100) / 100  # the same for every model
        p_right = max(0.0, min(1.0, MODEL_SKILL[model] + 0.5 - difficulty))
        look_alike = label + 1 if label % 2 == 0 else label - 1
        for _ in range(VIDEOS_PER_CLASS):
            if rng.random() < p_right:
                pairs.append((label, label))
            elif rng.random() < 0.7:
                pairs.append((label, look_alike))
            else:
                pairs.append((label, rng.randrange(len(CLASSES))))
    return pairs


def model_scores(pairs: list[tuple[int, int]]) -> dict:
    """What ``distill.evaluate.evaluate`` returns, computed from the per-sample predictions."""
    size = len(CLASSES)
    matrix = np.zeros((size, size), dtype=int)
    for label, predicted in pairs:
        matrix[label, predicted] += 1
    per_class = matrix.diagonal() / matrix.sum(1)
    top1 = float(matrix.trace() / matrix.sum())
    return {
        'config': 'tsm_mobilenetv2_tiny',
        'test_pipeline': ['DecordInit()'],
        'num_samples': int(matrix.sum()),
        'top1_acc': top1,
        'top5_acc': min(1.0, top1 + 0.2),
        'mean_class_acc': float(per_class.mean()),
        'classes': CLASSES,
        'confusion_matrix': matrix.tolist(),
    }


@pytest.fixture(scope='module')
def k400(tmp_path_factory):
    """(metrics.json, card, written report files, report.md, model_card.md) at 400 classes."""
    rng = random.Random(0)
    results = {name: model_scores(predictions(name, rng)) for name in MODEL_SKILL}
    metrics = summarise_metrics('k400-run', results)
    root = tmp_path_factory.mktemp('k400')
    for name, records in (
        ('kd', [train_record(e, e, 2.0 / e, 1.0 / e) for e in (1, 2, 3)]),
        ('alone', [{'loss_cls': 2.5 / e, 'epoch': e, 'iter': e, 'step': e} for e in (1, 2, 3)]),
    ):
        path = root / name / 't' / 'vis_data' / 'scalars.json'
        path.parent.mkdir(parents=True)
        vals = [val_record(e, 0.2 * e, 0.8) for e in (1, 2, 3)]
        if name == 'alone':
            vals = [{'acc/top1': 0.1 * e, 'step': e} for e in (1, 2, 3)]
        path.write_text('\n'.join(json.dumps(r) for r in [*records, *vals]) + '\n')
    card = model_card.build_model_card(
        run_id='k400-run',
        kd_config='kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400',
        student_config='tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb',
        metrics=metrics,
        parity={**PARITY, 'num_clips': 32, 'val_clips': 2000, 'sample': 'random, seed 0'},
        preprocess=PREPROCESS,
        speed=synthetic_speed(),
        lineage=model_card.lineage(
            teacher_url='https://zoo.example/t.pth',
            teacher_sha256='0' * 64,
            dataset_uri='s3://b/k400',
            dataset_manifest_sha256='1' * 64,
            pretrained={'model.backbone.pretrained': None},
            pipeline_parameters={'max_epochs': 100, 'parity_clips': 32, 'num_workers': 8},
            code_version='abc',
            image='img:1',
        ),
    )
    written = plots.make_report(
        root / 'out',
        metrics=metrics,
        log_root=root / 'kd',
        baseline_log_root=root / 'alone',
        speed=synthetic_speed(),
        parity=card['export']['parity'],
        headline=model_card.headline(card),
        parameters=card['lineage']['pipeline_parameters'],
    )
    student = {'s3_uri': 's3://b/r/student.pth'}
    report = markdown_report(metrics, student, {'s3_uri': 's3://b/t.pth'}, 's3://b/alone.pth')
    return metrics, card, written, report, model_card.render_markdown(card)


def test_the_markdown_reports_stay_bounded_at_400_classes(k400):
    metrics, _, _, report, card_md = k400
    assert class_report.MAX_MARKDOWN_BYTES <= 24_000  # the bound the docs state
    for text in (report, card_md):
        assert len(text.encode()) <= class_report.MAX_MARKDOWN_BYTES
        assert '(cut at' not in text  # within the bound as written, not by cutting
        assert 'Most-confused pairs' in text and 'Where KD hurt most' in text
    worst = class_report.worst_classes(class_report.class_rows(metrics), 1)[0]['class']
    assert f'| {worst} |' in report and f'| {worst} |' in card_md
    gain = metrics['kd_gain']['top1_acc']
    assert gain > 0 and f'KD helped: top-1 {gain:+.4f}' in report
    assert card_md.splitlines()[2].startswith(f'- **KD gain**: top-1 {gain:+.4f}')
    assert '- **Verdict**: review first:' in card_md  # 'validation set size'... fail honestly
    assert '400 classes, in the order of' in card_md and '| true \\ predicted |' not in report


def test_per_class_numbers_come_from_the_predictions(k400):
    metrics, _, written, _, _ = k400
    rows = class_report.class_rows(metrics)
    matrix = np.asarray(metrics['confusion_matrix'])
    assert [r['student'] for r in rows] == pytest.approx(list(matrix.diagonal() / matrix.sum(1)))
    assert np.mean([r['student'] for r in rows]) == pytest.approx(
        metrics['student']['mean_class_acc']
    )
    assert all(r['kd_change'] == pytest.approx(r['student'] - r['baseline']) for r in rows)
    pairs = class_report.confused_pairs(metrics['confusion_matrix'])
    off = matrix - np.diag(matrix.diagonal())
    assert pairs[0][2] == off.max() and len(pairs) == class_report.TOP_N
    focus = class_report.confusion_focus(metrics['confusion_matrix'])
    assert len(focus) == class_report.MAX_CONFUSION_CLASSES and {*pairs[0][:2]} <= set(focus)
    with open(written['per_class_csv'], newline='') as table:
        read = list(csv.DictReader(table))
    assert len(read) == 400 and {r['class'] for r in read} == set(CLASSES)  # quotes survive
    assert [float(r['student']) for r in read] == sorted(float(r['student']) for r in read)


def test_the_images_stay_within_their_bound(k400):
    written = k400[2]
    for key in ('curves', 'confusion', 'per_class', 'accuracy_latency'):
        with Image.open(written[key]) as image:
            assert max(image.size) <= plots.MAX_IMAGE_PX and min(image.size) > 300, key
            assert np.asarray(image.convert('L')).std() > 10, key  # not blank


def chromium_dom(page, tmp_path) -> str:
    """The page's DOM after load in headless Chromium, with each image's natural size
    written into it by a script added to a copy (the report itself has no scripts)."""
    probe = tmp_path / 'probe.html'
    script = (
        "<script>window.addEventListener('load', () => document.body.setAttribute("
        "'data-images', JSON.stringify([...document.images].map("
        'i => [i.naturalWidth, i.naturalHeight]))));</script>'
    )
    probe.write_text(page.read_text().replace('</body>', script + '</body>'))
    profile = tmp_path / 'profile_dom'
    profile.mkdir()
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', '--dump-dom', probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason='chromium not installed (apt-get install chromium)')
def test_the_400_class_page_renders_in_a_real_browser(k400, tmp_path):
    metrics, card, written, _, _ = k400
    page = written['html']
    assert page.stat().st_size < 2_000_000  # 4 inline PNGs and bounded tables
    dom = chromium_dom(page, tmp_path)
    found = dom.split('data-images="', 1)[1].split('"', 1)[0]
    sizes = json.loads(html.unescape(found))
    assert len(sizes) == 4
    assert all(0 < w <= plots.MAX_IMAGE_PX and 0 < h <= plots.MAX_IMAGE_PX for w, h in sizes)
    text = html.unescape(dom)
    rows = class_report.class_rows(metrics)
    for row in class_report.worst_classes(rows):  # labels on the page, as written
        assert row['class'] in text, row['class']
    for i, j, _, _ in class_report.confused_pairs(metrics['confusion_matrix']):
        assert CLASSES[i] in text and CLASSES[j] in text
    for label, line in model_card.headline(card):
        assert f'{label}: {line}' in text.replace('</b>', '').replace('<b>', '')
    assert text.index('Headline') < text.index('Run parameters') < text.index('Accuracy')
    pixels = chromium_screenshot(page, tmp_path)
    assert pixels.std() > 20, 'the page rendered blank'
    assert rendered_plots(pixels) > 5000, 'the plots did not render'


def test_the_confusion_view_fills_up_with_the_worst_classes_when_few_are_confused():
    matrix = [[5 if i == j else 0 for j in range(30)] for i in range(30)]
    matrix[3][4], matrix[3][3], matrix[7][7] = 2, 3, 1  # one confusion; class 7 half right
    matrix[7][8] = 1
    focus = class_report.confusion_focus(matrix, limit=5)
    assert focus[:4] == [3, 4, 7, 8] and len(focus) == 5 == len(set(focus))
