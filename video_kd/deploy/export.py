"""Student checkpoint -> ONNX, verified against PyTorch on the validation clips.

    python -m video_kd.deploy.export kd_logits_tsm-res50_tsm-mobilenetv2_tiny epoch_6_student.pth \\
        --data-root data/kd_demo --out-dir export/

writes ``student.onnx``, ``preprocess.json`` (what a consumer does to a video
before the graph) and ``parity.json`` (ONNX Runtime vs PyTorch on the val set, or on a
bounded sample of it: ``parity_clips`` clips drawn with a fixed seed, ``PARITY_SEED``, so
the same val list always gives the same clips; Kinetics-400 has 19.8k val videos).

What is inside the graph and what is not.  MMAction2 splits inference in three:
the test pipeline (decode, sample frames, resize, crop, ``FormatShape``,
``PackActionInputs``: a uint8 tensor per video), the model's
``data_preprocessor`` (float32, BGR->RGB if configured, ``(x - mean) / std``)
and the recognizer (backbone, head, ``average_clip``).  The exported graph is
``RecognizerScores``: the data preprocessor's normalisation + the recognizer in
test mode + the head's clip averaging, so its input is exactly what the test
pipeline packs, as float32, with a batch axis in front (``N x views x C x H x W``
for 2D recognizers such as TSM/TSN; ``N x views x C x T x H x W`` for 3D ones),
and its ``scores`` are MMAction2's ``pred_score``.  The test pipeline stays
outside the graph; ``preprocess.json`` lists it, transform by transform.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.artifacts import DatasetContents
from video_kd.core.checks import check_number, check_range
from video_kd.core.errors import UserError, one_line, run_cli, setup_logging
from video_kd.data.data_stream import use_test_data
from video_kd.openmmlab.checkpoints import load_state_dict, state_dict_mismatch
from video_kd.openmmlab.config import load_config, student_model_cfg
from video_kd.openmmlab.runtime import register_all_modules

if TYPE_CHECKING:
    from mmaction.models.recognizers import BaseRecognizer
    from mmengine.config import Config
    from onnxruntime import InferenceSession

logger = logging.getLogger(__name__)

ONNX_NAME = 'student.onnx'
TORCHSCRIPT_NAME = 'student.torchscript.pt'
PREPROCESS_NAME = 'preprocess.json'
PARITY_NAME = 'parity.json'
INPUT_NAME = 'inputs'
OUTPUT_NAMES = ('scores', 'logits')
DEFAULT_OPSET = 17  # ONNX Runtime >= 1.12 runs it; every op TSM/TSN need is there
DEFAULT_TOLERANCE = 1e-3  # max |logit_onnx - logit_torch|; float32 reorderings give ~1e-5
DEFAULT_PARITY_CLIPS = 32  # the pipeline's parity_clips: a bounded read at any val set size
PARITY_SEED = 0  # the parity sample's seed: the same val list gives the same clips


class ExportError(UserError):
    """The student cannot be exported (an op ONNX lacks, a broken checkpoint, bad input)."""


class ParityError(UserError):
    """ONNX Runtime does not reproduce the PyTorch student within the tolerance."""


# --------------------------------------------------------------------------- the graph


class RecognizerScores(nn.Module):
    """An MMAction2 recognizer as one tensor -> tensors function, for export.

    Input: the test pipeline's packed clips as float32 pixel values, batched
    (``N x views x C x H x W`` for 2D recognizers).  Outputs: ``scores``
    (``N x classes``, MMAction2's ``pred_score``: clip-averaged as the head's
    ``average_clips`` says) and ``logits`` (``N x clips x classes``, the head's
    output before that averaging).
    """

    def __init__(self, recognizer: BaseRecognizer):
        super().__init__()
        self.recognizer = recognizer
        preprocessor = recognizer.data_preprocessor
        self.to_rgb = bool(getattr(preprocessor, 'to_rgb', False))
        self.normalize = bool(getattr(preprocessor, '_enable_normalize', False))
        self.average_clips = getattr(recognizer.cls_head, 'average_clips', 'score')
        if self.average_clips not in ('score', 'prob'):
            raise ExportError(
                f'cls_head.average_clips={self.average_clips!r}: only "score" and "prob" '
                'give one score per video; set it in the config'
            )

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = inputs
        if self.to_rgb:  # ActionDataPreprocessor flips the channel axis (2 here)
            x = x.flip(2)
        if self.normalize:
            pre = self.recognizer.data_preprocessor
            x = (x - pre.mean) / pre.std
        feats, kwargs = self.recognizer.extract_feat(x, test_mode=True)
        head_out = self.recognizer.cls_head(feats, **kwargs)
        logits = head_out.reshape(inputs.shape[0], -1, head_out.shape[-1])
        if self.average_clips == 'prob':
            return logits.softmax(dim=2).mean(dim=1), logits
        return logits.mean(dim=1), logits


# --------------------------------------------------------------------------- inputs


def load_student(
    config: str, checkpoint: str | Path, data_root: str | Path | DatasetContents
) -> tuple[nn.Module, Any, list[str]]:
    """(recognizer in eval mode with the checkpoint, test config, class names).

    ``data_root``: a local dataset root or a prepared dataset's metadata (val
    streamed where it is).  The checkpoint must fit the config's student
    exactly, as for evaluation.
    """
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    register_all_modules()
    init_default_scope('mmaction')
    cfg = load_config(config)
    cfg.model = student_model_cfg(cfg)
    classes = use_test_data(cfg, data_root)
    model = MODELS.build(cfg.model)
    state = load_state_dict(checkpoint)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ExportError(
            f'checkpoint {checkpoint} does not fit the student of {config}: {mismatch}'
        )
    model.load_state_dict(state, strict=True)
    return model.eval(), cfg, classes


def val_dataset(cfg: Config) -> Any:
    from mmaction.registry import DATASETS

    return DATASETS.build(cfg.test_dataloader.dataset)


def parity_sample(total: int, clips: int | None, seed: int = PARITY_SEED) -> list[int]:
    """Indices of the val clips the parity check reads: all of them when ``clips`` is None or
    covers the list, else ``clips`` drawn at random with ``seed`` (sorted: read in order)."""
    if clips is None or clips >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), clips))


def iter_val_clips(
    cfg: Config, limit: int | None = None, indices: list[int] | None = None
) -> Iterator[tuple[torch.Tensor, int, str]]:
    """(packed clip as float32, label, video path) of the val list (its first ``limit``, or
    the clips at ``indices``), via the config's test pipeline: what MMAction2's test loop
    feeds the model, one video at a time."""
    dataset = val_dataset(cfg)
    if indices is None:
        indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    for index in indices:
        item = dataset[index]
        sample = item['data_samples']
        yield (
            item['inputs'].float(),
            int(sample.gt_label.item()),
            str(sample.metainfo.get('filename', '')),
        )


def batches(
    clips: Iterable[tuple[torch.Tensor, int, str]], size: int
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Stack clips into batches of ``size`` (the last one may be smaller)."""
    inputs, labels = [], []
    for clip, label, _ in clips:
        inputs.append(clip)
        labels.append(label)
        if len(inputs) == size:
            yield torch.stack(inputs), labels
            inputs, labels = [], []
    if inputs:
        yield torch.stack(inputs), labels


# --------------------------------------------------------------------------- export


def export_onnx(
    module: RecognizerScores,
    example: torch.Tensor,
    path: Path,
    opset: int = DEFAULT_OPSET,
    model: str = 'student',
) -> Path:
    """Trace ``module`` on ``example`` into ``path`` with a dynamic batch axis.

    torch's TorchScript-based exporter (``dynamo=False``): it needs no extra package
    and traces the recognizers' Python control flow at the example's shape.  ``model``
    names the recognizer in the error (the speed measurement exports the teacher too).
    """
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    dynamic = {INPUT_NAME: {0: 'batch'}, **{name: {0: 'batch'} for name in OUTPUT_NAMES}}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch calls this exporter legacy; it is the one that needs no onnxscript
            warnings.simplefilter('ignore', DeprecationWarning)
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as error:  # the exporter raises many types; all mean "does not export"
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f'the {model} does not export to ONNX (opset {opset}): {one_line(error)}'
        ) from error
    tmp.replace(path)  # a half-written model never carries the final name
    return path


def export_torchscript(module: RecognizerScores, example: torch.Tensor, path: Path) -> Path:
    """The same module traced to TorchScript (for consumers with libtorch, not ONNX)."""
    with torch.no_grad():
        traced = torch.jit.trace(module, (example,), check_trace=False)
    tmp = path.with_suffix('.tmp')
    traced.save(str(tmp))
    tmp.replace(path)
    return path


def ort_session(path: str | Path, threads: int | None = None, spin: bool = True) -> Any:
    """An ONNX Runtime CPU session with all graph optimisations.

    ``spin=False`` stops its threads from busy-waiting after a run: ONNX Runtime's default
    keeps the cores busy for a while, which a process that interleaves engines (the speed
    measurement) would otherwise charge to whatever runs next.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        options.add_session_config_entry('session.inter_op.allow_spinning', '0')
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


# --------------------------------------------------------------------------- parity


def compare_on_clips(
    module: RecognizerScores,
    session: InferenceSession,
    clips: Iterable[tuple[torch.Tensor, int, str]],
    batch_size: int = 4,
) -> dict[str, Any]:
    """Run PyTorch and ONNX Runtime on the same batches; the differences and accuracies."""
    max_logit, max_score, agree, correct_torch, correct_onnx, count = 0.0, 0.0, 0, 0, 0, 0
    batch_sizes = set()
    for inputs, labels in batches(clips, batch_size):
        with torch.no_grad():
            scores_t, logits_t = (t.numpy() for t in module(inputs))
        scores_o, logits_o = session.run(list(OUTPUT_NAMES), {INPUT_NAME: inputs.numpy()})
        max_logit = max(max_logit, float(np.abs(logits_o - logits_t).max()))
        max_score = max(max_score, float(np.abs(scores_o - scores_t).max()))
        top_t, top_o, truth = scores_t.argmax(1), scores_o.argmax(1), np.asarray(labels)
        agree += int((top_t == top_o).sum())
        correct_torch += int((top_t == truth).sum())
        correct_onnx += int((top_o == truth).sum())
        count += len(labels)
        batch_sizes.add(len(labels))
    if not count:
        raise ExportError('the validation list has no clips to verify the export on')
    return dict(
        num_clips=count,
        batch_sizes=sorted(batch_sizes),
        max_abs_logit_diff=max_logit,
        max_abs_score_diff=max_score,
        top1_agreement=agree / count,
        top1_acc_pytorch=correct_torch / count,
        top1_acc_onnx=correct_onnx / count,
    )


def check_parity(
    parity: dict[str, Any], tolerance: float, reference_top1: float | None = None
) -> None:
    """Raise ParityError unless ONNX reproduces PyTorch: logits within ``tolerance`` and
    the same top-1 on the val set (and the evaluation step's top-1, when given)."""
    if not parity['max_abs_logit_diff'] <= tolerance:  # NaN fails too
        raise ParityError(
            f'ONNX Runtime and PyTorch disagree: max |logit difference| '
            f'{parity["max_abs_logit_diff"]:.3g} > tolerance {tolerance:g} on '
            f'{parity["num_clips"]} val clips (top-1 agreement {parity["top1_agreement"]:.4f})'
        )
    if parity['top1_acc_onnx'] != parity['top1_acc_pytorch']:
        raise ParityError(
            f"ONNX top-1 {parity['top1_acc_onnx']:.4f} differs from the PyTorch student's "
            f'{parity["top1_acc_pytorch"]:.4f} on {parity["num_clips"]} val clips'
        )
    if reference_top1 is not None and abs(parity['top1_acc_onnx'] - reference_top1) > 1e-9:
        raise ParityError(
            f"ONNX top-1 {parity['top1_acc_onnx']:.4f} differs from the evaluation step's "
            f'student top-1 {reference_top1:.4f}: not the same model or not the same val set'
        )


# --------------------------------------------------------------------------- preprocessing


def preprocess_spec(
    cfg: Config, classes: list[str], example_shape: tuple[int, ...]
) -> dict[str, Any]:
    """What a consumer does before and after the graph, from the config itself."""
    pipeline = public_pipeline(cfg.test_dataloader.dataset.pipeline)
    sampler = next((t for t in pipeline if t['type'] == 'SampleFrames'), {})
    fmt = next((t.get('input_format') for t in pipeline if t['type'] == 'FormatShape'), None)
    pre = cfg.model.data_preprocessor
    layout = 'N x views x C x H x W' if fmt == 'NCHW' else 'N x views x C x T x H x W'
    return {
        'input': {
            'name': INPUT_NAME,
            'shape': ['batch', *example_shape[1:]],
            'layout': layout,
            'views': 'num_clips x clip_len x crops frames (2D) in the order the test '
            'pipeline packs them (FormatShape)',
            'dtype': 'float32',
            'values': 'decoded RGB pixels 0-255 (decord gives RGB), resized and cropped, '
            'NOT normalised: normalisation is inside the graph',
        },
        'outputs': {
            'scores': 'N x classes: the video score (MMAction2 pred_score), averaged over '
            f'clips as average_clips={cfg.model.cls_head.get("average_clips", "score")!r} says',
            'logits': 'N x clips x classes: the head output before clip averaging',
        },
        'inside_graph': {
            'normalize': {
                'mean': list(pre.get('mean') or []),
                'std': list(pre.get('std') or []),
                'to_rgb': bool(pre.get('to_rgb', False)),
                'formula': '(x - mean) / std per channel',
            },
            'average_clips': cfg.model.cls_head.get('average_clips', 'score'),
        },
        'outside_graph': {
            'frame_sampling': {
                k: sampler.get(k)
                for k in ('clip_len', 'frame_interval', 'num_clips', 'twice_sample')
                if k in sampler
            }
            | {'test_mode': True},
            'test_pipeline': pipeline,
            'video_info': dict(VIDEO_INFO),
            'note': 'start from {"filename": <the video file>, **video_info}, apply the '
            'transforms of test_pipeline in order (MMAction2 names), then add the batch axis',
        },
        'input_format': fmt,
        'classes': list(classes),
    }


# Where a transform reads its file from is this deployment's business (the run streams the
# val videos from S3 through its own backend); a consumer reads its video its own way.
_WHERE_FROM = ('io_backend', 'backend_args', 'file_client_args')
# What a video record holds before the first transform (MMAction2's VideoDataset defaults)
VIDEO_INFO = {'start_index': 0, 'modality': 'RGB'}


def public_pipeline(pipeline: Iterable[Any]) -> list[dict[str, Any]]:
    """The test pipeline as any MMAction2 install runs it: MMAction2 transform names and
    parameters only, without where this run read its videos from (its I/O backend)."""
    from mmaction.registry import TRANSFORMS

    public = []
    for transform in pipeline:
        step = {k: v for k, v in dict(transform).items() if k not in _WHERE_FROM}
        found = TRANSFORMS.get(step['type'])
        if found is None or not found.__module__.startswith(('mmaction.', 'mmcv.')):
            raise ExportError(
                f"the test pipeline's transform {step['type']!r} is not an MMAction2 one: "
                'a consumer of the exported model could not run it'
            )
        public.append(step)
    return public


# --------------------------------------------------------------------------- the step's call


def export_student(
    config: str,
    checkpoint: str | Path,
    data_root: str | Path | DatasetContents,
    out_dir: str | Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    batch_size: int = 4,
    max_clips: int | None = None,
    parity_clips: int | None = None,
    reference_top1: float | None = None,
    torchscript: bool = False,
) -> dict[str, Any]:
    """Export the student to ONNX, write its preprocessing, verify it on the val clips.

    ``config`` is the KD config (its student is exported) or the student's own.  The parity
    check reads every val clip, the first ``max_clips``, or a seeded random sample of
    ``parity_clips`` (``parity_sample``); ``reference_top1`` (the evaluation's top-1 on the
    whole val list) is compared only when it read them all.
    Raises ExportError / ParityError (one line each); nothing lands in ``out_dir``
    under the final names unless the parity check passed.
    Returns what was written (paths) and the parity numbers.
    """
    out_dir = Path(out_dir)
    check_number('--tolerance', tolerance, 0)
    if max_clips is not None:
        check_range('--max-clips', max_clips, 1)
    if parity_clips is not None:
        check_range('parity_clips', parity_clips, 1)
    refuse_existing(out_dir, [ONNX_NAME, TORCHSCRIPT_NAME, PREPROCESS_NAME, PARITY_NAME])
    started = time.monotonic()
    model, cfg, classes = _load(config, checkpoint, data_root)
    module = RecognizerScores(model).eval()
    first = next(iter_val_clips(cfg, limit=1), None)
    if first is None:
        where = data_root.get('source') if isinstance(data_root, dict) else data_root
        raise ExportError(f'{where} has no validation clips to export the student with')
    example = first[0].unsqueeze(0).repeat(2, *[1] * first[0].dim())  # batch 2: not a constant 1
    total = len(val_dataset(cfg))
    if max_clips is not None:
        indices, sample = list(range(min(max_clips, total))), f'the first {max_clips}'
    else:
        indices = parity_sample(total, parity_clips)
        sample = 'all' if len(indices) == total else f'random, seed {PARITY_SEED}'
    staging = out_dir / '.staging'
    try:
        onnx_path = export_onnx(module, example, staging / ONNX_NAME, opset)
        parity = compare_on_clips(
            module, ort_session(onnx_path), iter_val_clips(cfg, indices=indices), batch_size
        )
        parity.update(tolerance=tolerance, opset=opset, val_clips=total, sample=sample)
        _log_parity(parity)
        whole = len(indices) == total
        check_parity(parity, tolerance, reference_top1 if whole else None)
        written = {'onnx': _publish_local(onnx_path, out_dir)}
        if torchscript:
            ts_path = export_torchscript(module, example, staging / TORCHSCRIPT_NAME)
            written['torchscript'] = _publish_local(ts_path, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    spec = preprocess_spec(cfg, classes, tuple(example.shape))
    written['preprocess'] = _write_json(out_dir / PREPROCESS_NAME, spec)
    written['parity'] = _write_json(out_dir / PARITY_NAME, parity)
    return {
        'files': {k: str(v) for k, v in written.items()},
        'parity': parity,
        'input_shape': spec['input']['shape'],
        'classes': list(classes),
        'seconds': time.monotonic() - started,
    }


def _load(config: str, checkpoint: str | Path, data_root: str | Path | DatasetContents):
    """load_student with any user error (a bad config, checkpoint or dataset) as ExportError."""
    try:
        return load_student(config, checkpoint, data_root)
    except UserError as error:
        if isinstance(error, ExportError):
            raise
        raise ExportError(one_line(error)) from error


def _log_parity(parity: dict[str, Any]) -> None:
    logger.info(
        'parity on %d of %d val clips (%s): max |logit diff| %.3g, top-1 agreement %.4f, '
        'top-1 %.4f (ONNX) vs %.4f (PyTorch)',
        parity['num_clips'],
        parity['val_clips'],
        parity['sample'],
        parity['max_abs_logit_diff'],
        parity['top1_agreement'],
        parity['top1_acc_onnx'],
        parity['top1_acc_pytorch'],
    )


def refuse_existing(out_dir: Path, names: list[str]) -> None:
    """Nothing earlier is overwritten: an output directory that holds an export is refused."""
    existing = [name for name in names if (out_dir / name).exists()]
    if existing:
        raise ExportError(f'{out_dir} already holds {", ".join(existing)}: use a new --out-dir')


def _publish_local(staged: Path, out_dir: Path) -> Path:
    final = out_dir / staged.name
    staged.replace(final)
    return final


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + '\n')
    return path


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.deploy.export',
        description='Export a student checkpoint to ONNX (dynamic batch) with its '
        'preprocessing (preprocess.json), and verify it: ONNX Runtime vs PyTorch on the '
        "val clips, decoded by the config's own test pipeline (parity.json). Fails, "
        'writing nothing, when the model does not export or the outputs disagree.',
    )
    parser.add_argument('config', help='KD config (its student is exported) or a student config')
    parser.add_argument('checkpoint', help='student checkpoint, e.g. epoch_6_student.pth')
    parser.add_argument('--data-root', required=True, help='dataset root (val_list.txt is used)')
    parser.add_argument('--out-dir', required=True, help='where student.onnx etc. go')
    parser.add_argument(
        '--tolerance',
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f'max |ONNX - PyTorch| logit difference (default {DEFAULT_TOLERANCE:g})',
    )
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset version')
    parser.add_argument('--max-clips', type=int, help='verify on the first N val clips only')
    parser.add_argument(
        '--parity-clips',
        type=int,
        help=f'verify on N val clips drawn at random (seed {PARITY_SEED}); default: all',
    )
    parser.add_argument('--torchscript', action='store_true', help='also write a TorchScript file')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    result = export_student(
        args.config,
        args.checkpoint,
        args.data_root,
        args.out_dir,
        tolerance=args.tolerance,
        opset=args.opset,
        max_clips=args.max_clips,
        parity_clips=args.parity_clips,
        torchscript=args.torchscript,
    )
    logger.info('wrote %s', ', '.join(result['files'].values()))
    print(result['files']['onnx'])  # stdout: the model, for scripts (mmengine logs go there too)
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
