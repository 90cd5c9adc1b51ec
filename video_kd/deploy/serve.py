"""``video-kd serve``: a KServe model server for an exported student.

    video-kd serve /mnt/models --model-name tsm-mobilenetv2 --http-port 8080

The model directory is what the export step wrote (``student.onnx`` and
``preprocess.json``; an ``s3://`` prefix is downloaded first).  A request carries
videos, each as raw bytes, base64 or an ``s3://`` / ``https://`` URI:

* Open Inference Protocol (v2): ``POST /v2/models/<name>/infer`` with one BYTES
  input (shape ``[N]``) whose elements are URIs or the base64 of the videos.  The
  answer has ``labels`` (BYTES) and ``scores`` (FP32), ``N x top_k`` each.  (Not the
  binary-data extension: KServe 0.21 turns its BYTES elements into UTF-8 strings, which
  a video is not, and answers 500.)
* v1: ``POST /v1/models/<name>:predict`` with
  ``{"instances": [{"b64": "..."} or {"uri": "s3://..."}]}``, or with the video's
  raw bytes as the body (``Content-Type: video/mp4``); the answer is
  ``{"predictions": [{"labels": [...], "scores": [...]}]}``.

Each video goes through the student's own test pipeline, as ``preprocess.json``
lists it (MMAction2 transforms: decode, sample, resize, crop, ``FormatShape``),
then through the ONNX graph (normalisation and clip averaging are inside it) in
ONNX Runtime.  A video that cannot be fetched or decoded is HTTP 400 with the
reason; the server goes on serving.  KServe gives the rest: ``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/<name>/ready``, ``/metrics`` (Prometheus:
time spent in preprocess, i.e. fetching and decoding, and in predict).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from video_kd.core.errors import UserError, one_line
from video_kd.deploy.export import INPUT_NAME, ONNX_NAME, PREPROCESS_NAME, ort_session
from video_kd.storage import download, s3

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
VIDEO_INPUT = 'video'  # the v2 request's BYTES input
URI_SCHEMES = ('s3', 'https', 'http')  # http:// only from this machine (download.check_url)


class ModelDirError(UserError):
    """The model directory lacks what export writes, or holds something else."""


# --------------------------------------------------------------------------- the recipe


class VideoRecipe:
    """A video's bytes -> the graph's input, by the student's test pipeline.

    The transforms are MMAction2's, built from ``preprocess.json``; the first one
    (``DecordInit``) reads a file, so the bytes are written to a temporary one: the
    pipeline runs exactly as in the test loop.
    """

    def __init__(self, spec: dict[str, Any]):
        from mmaction.utils import register_all_modules
        from mmcv.transforms import Compose

        register_all_modules(init_default_scope=True)
        outside = spec['outside_graph']
        self.pipeline = Compose([_tuples(step) for step in outside['test_pipeline']])
        self.video_info = dict(outside.get('video_info') or {'start_index': 0, 'modality': 'RGB'})
        self.classes: list[str] = list(spec['classes'])

    def __call__(self, video: bytes) -> np.ndarray:
        """The packed clip (``views x C x H x W``, float32); InvalidInput when undecodable."""
        with tempfile.NamedTemporaryFile(suffix='.mp4') as file:
            file.write(video)
            file.flush()
            try:
                packed = self.pipeline({'filename': file.name, **self.video_info})
            except Exception as error:  # decord and the transforms raise many types
                raise InvalidInput(f'cannot decode the video: {one_line(error)}') from error
        return packed['inputs'].numpy().astype(np.float32)


def _tuples(value: Any) -> Any:
    """JSON's lists back to the tuples the config had (``Resize(scale=(-1, 64))`` wants one)."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


# --------------------------------------------------------------------------- request -> videos


def fetch_video(uri: str) -> bytes:
    """The bytes at an ``s3://`` or ``https://`` URI (InvalidInput when unreadable)."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme not in URI_SCHEMES:  # never a path or file:// on the server's own disk
        raise InvalidInput(f'unsupported video URI {uri!r}: use s3:// or https://')
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download.fetch(uri, tmp, retries=1, timeout=30.0).path
        except UserError as error:
            raise InvalidInput(f'cannot read the video {uri}: {one_line(error)}') from error
        return path.read_bytes()


def video_from_text(text: str) -> bytes:
    """A JSON string element: a URI when it has a scheme, else base64."""
    if '://' in text[:16]:
        return fetch_video(text)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInput(f'a video is neither a URI nor base64: {one_line(error)}') from error


def v1_videos(body: dict[str, Any]) -> list[bytes]:
    instances = body.get('instances')
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('expected {"instances": [{"b64": ...} or {"uri": ...}, ...]}')
    videos = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and isinstance(instance.get('b64'), str):
            videos.append(video_from_text(instance['b64']))
        elif isinstance(instance, dict) and isinstance(instance.get('uri'), str):
            videos.append(fetch_video(instance['uri']))
        else:
            raise InvalidInput(f'instance {index}: expected {{"b64": ...}} or {{"uri": ...}}')
    return videos


def v2_videos(request: InferRequest) -> list[bytes]:
    if len(request.inputs) != 1 or request.inputs[0].datatype != 'BYTES':
        raise InvalidInput(f'expected one BYTES input ({VIDEO_INPUT!r}) of videos')
    videos = []
    for element in request.inputs[0].as_numpy().ravel():
        text = element.decode() if isinstance(element, bytes) else str(element)
        videos.append(video_from_text(text))
    if not videos:
        raise InvalidInput(f'the {VIDEO_INPUT!r} input holds no video')
    return videos


# --------------------------------------------------------------------------- the model


@dataclass
class Clips:
    """What preprocess hands to predict: the batch and the request it answers."""

    inputs: np.ndarray
    request: InferRequest | None  # None: a v1 request


class VideoClassifier(kserve.Model):
    """An exported student as a KServe model: videos in, top-k class names and scores out."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        top_k: int = DEFAULT_TOP_K,
        threads: int | None = None,
    ):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.top_k = top_k
        self.threads = threads
        self.session: Any = None
        self.recipe: VideoRecipe | None = None

    def load(self) -> bool:
        spec = read_recipe(self.model_dir)
        self.recipe = VideoRecipe(spec)
        self.session = ort_session(self.model_dir / ONNX_NAME, threads=self.threads)
        self.top_k = min(self.top_k, len(self.recipe.classes))
        self.ready = True
        return self.ready

    def preprocess(
        self, payload: bytes | dict | InferRequest, headers: dict[str, str] | None = None
    ) -> Clips:
        assert self.recipe is not None
        if isinstance(payload, bytes) and payload.lstrip()[:1] == b'{':
            payload = _json_body(payload)  # v1 JSON sent without a JSON content type
        if isinstance(payload, bytes):  # v1 with the raw video as the body
            videos, request = [payload], None
        elif isinstance(payload, InferRequest):
            videos, request = v2_videos(payload), payload
        elif isinstance(payload, dict):
            videos, request = v1_videos(payload), None
        else:
            raise InvalidInput(f'unsupported request body ({type(payload).__name__})')
        return Clips(np.stack([self.recipe(video) for video in videos]), request)

    def validate(self, payload: Any) -> Any:
        return payload  # preprocess has checked it

    def predict(
        self, payload: Clips, headers: dict[str, str] | None = None
    ) -> tuple[np.ndarray, Clips]:
        (scores,) = self.session.run(['scores'], {INPUT_NAME: payload.inputs})
        return scores, payload

    def postprocess(
        self, result: tuple[np.ndarray, Clips], headers: dict[str, str] | None = None
    ) -> Any:
        scores, clips = result
        labels, top = self.top(scores)
        if clips.request is None:
            return {
                'predictions': [
                    {'labels': row_labels, 'scores': row_scores.tolist()}
                    for row_labels, row_scores in zip(labels, top, strict=True)
                ]
            }
        shape = [len(labels), self.top_k]
        outputs = [
            InferOutput('labels', shape, 'BYTES', [label for row in labels for label in row]),
            InferOutput('scores', shape, 'FP32', top.ravel().tolist()),
        ]
        return InferResponse(clips.request.id or str(uuid.uuid4()), self.name, outputs)

    def top(self, scores: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
        """The ``top_k`` class names and scores of each row, best first."""
        assert self.recipe is not None
        order = np.argsort(-scores, axis=1, kind='stable')[:, : self.top_k]
        labels = [[self.recipe.classes[i] for i in row] for row in order]
        return labels, np.take_along_axis(scores, order, axis=1).astype(np.float32)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as error:
        raise InvalidInput(f'the request body is not JSON: {one_line(error)}') from error


def read_recipe(model_dir: Path) -> dict[str, Any]:
    """``preprocess.json`` of an export, checked to hold what serving needs."""
    for name in (ONNX_NAME, PREPROCESS_NAME):
        if not (model_dir / name).is_file():
            raise ModelDirError(
                f'{model_dir} has no {name}: give the directory the export step wrote '
                '(<run>/export/ or a copy of it)'
            )
    try:
        spec = json.loads((model_dir / PREPROCESS_NAME).read_text())
        spec['outside_graph']['test_pipeline'], spec['classes']
    except (ValueError, KeyError, TypeError) as error:
        raise ModelDirError(
            f'{model_dir / PREPROCESS_NAME} is not an export recipe: {one_line(error)}'
        ) from error
    return spec


def local_model_dir(model_dir: str, scratch: Path) -> Path:
    """``model_dir`` itself, or an ``s3://`` prefix downloaded into ``scratch``."""
    if not model_dir.startswith('s3://'):
        return Path(model_dir)
    for name in (ONNX_NAME, PREPROCESS_NAME):
        s3.download_file(s3.join_uri(model_dir, name), scratch / name)
    return scratch


def serve(
    model_dir: str,
    name: str,
    *,
    http_port: int = 8080,
    grpc_port: int = 8081,
    enable_grpc: bool = True,
    top_k: int = DEFAULT_TOP_K,
    threads: int | None = None,
) -> None:
    """Load the student and serve it until the process is stopped (KServe's ModelServer)."""
    scratch = Path(tempfile.mkdtemp(prefix='video-kd-serve-'))
    model = VideoClassifier(name, local_model_dir(model_dir, scratch), top_k, threads)
    model.load()
    logger.info('serving %s from %s on port %d', name, model_dir, http_port)
    kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, enable_grpc=enable_grpc).start(
        [model]
    )
