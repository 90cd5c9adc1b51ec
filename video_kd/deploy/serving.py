"""What export writes for serving, next to the model: a KServe InferenceService and a
Triton model repository.

* ``inferenceservice.yaml``: a KServe ``InferenceService`` (``serving.kserve.io/v1beta1``)
  whose predictor is our image running ``video-kd serve`` (videos in, class names out;
  ``video_kd.deploy.serve``).  KServe's storage initializer copies the export directory
  (``STORAGE_URI``) to ``/mnt/models`` before the server starts; S3 credentials come from
  the ServiceAccount, as KServe documents.
* ``triton/<name>/``: the student as a Triton / KServe ONNX-runtime model repository:
  ``1/model.onnx``, ``config.pbtxt`` (input and outputs with the graph's own names,
  types and dims) and ``labels.txt`` (the class names, ``label_filename`` of
  ``scores``).  Those servers take the packed clip tensor, not a video: the
  decoding is ``preprocess.json``'s test pipeline, on the client side.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from video_kd.deploy.export import ort_session

INFERENCE_SERVICE_NAME = 'inferenceservice.yaml'
TRITON_DIR = 'triton'
LABELS_NAME = 'labels.txt'
MODEL_MOUNT = '/mnt/models'  # where KServe's storage initializer puts STORAGE_URI
HTTP_PORT = 8080  # KServe's default: its Prometheus scraping and probes expect it
# One replica's share of a CPU node: decoding and ONNX Runtime on one or two cores.
RESOURCES = {
    'requests': {'cpu': '1', 'memory': '2Gi'},
    'limits': {'cpu': '2', 'memory': '4Gi'},
}
MAX_BATCH_SIZE = 8
_NAME_LENGTH = 45  # KServe derives longer names (<name>-predictor-...) from it, all <= 63
# ONNX TensorProto element types -> Triton's
_TRITON_TYPES = {1: 'TYPE_FP32', 10: 'TYPE_FP16', 11: 'TYPE_FP64', 7: 'TYPE_INT64', 6: 'TYPE_INT32'}


def serving_name(kd_config: str) -> str:
    """A DNS-1035 label for the InferenceService and the Triton model, from the config's name."""
    name = re.sub(r'[^a-z0-9]+', '-', Path(kd_config).stem.lower()).strip('-')
    name = name[:_NAME_LENGTH].rstrip('-')
    return name if name[:1].isalpha() else f'kd-{name}'[:_NAME_LENGTH].rstrip('-')


def inference_service(
    name: str,
    image: str,
    storage_uri: str,
    *,
    service_account: str = '',
    top_k: int = 5,
) -> dict[str, Any]:
    """The InferenceService of an exported student: our image's ``video-kd serve``."""
    container: dict[str, Any] = {
        'name': 'kserve-container',
        'image': image,
        'command': ['video-kd'],
        'args': [
            'serve',
            MODEL_MOUNT,
            '--model-name',
            name,
            '--http-port',
            str(HTTP_PORT),
            '--top-k',
            str(top_k),
            '--no-grpc',  # Knative routes one port; v1 and v2 REST are on it
        ],
        'env': [{'name': 'STORAGE_URI', 'value': storage_uri}],
        'ports': [{'containerPort': HTTP_PORT, 'protocol': 'TCP'}],
        'resources': RESOURCES,
    }
    predictor: dict[str, Any] = {'minReplicas': 1, 'containers': [container]}
    if service_account:
        predictor['serviceAccountName'] = service_account
    return {
        'apiVersion': 'serving.kserve.io/v1beta1',
        'kind': 'InferenceService',
        'metadata': {
            'name': name,
            'annotations': {'serving.kserve.io/enable-prometheus-scraping': 'true'},
        },
        'spec': {'predictor': predictor},
    }


def triton_config(name: str, onnx_path: Path) -> str:
    """``config.pbtxt`` for the ONNX graph: its inputs and outputs, names, types, dims."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f'max_batch_size: {MAX_BATCH_SIZE}',
    ]
    inputs = [value for value in graph.input if value.name not in initializers]
    lines += _tensors('input', inputs, _declared_dims(inputs))
    lines += _tensors('output', list(graph.output), _output_dims(onnx_path), labels_for='scores')
    return '\n'.join(lines) + '\n'


def _declared_dims(values: list[Any]) -> dict[str, list[int]]:
    """Each tensor's dims after the batch axis as the graph declares them (-1: symbolic)."""
    return {
        value.name: [
            d.dim_value if d.HasField('dim_value') else -1 for d in value.type.tensor_type.shape.dim
        ][1:]
        for value in values
    }


def _output_dims(onnx_path: Path) -> dict[str, list[int]]:
    """The outputs' dims after the batch axis, from one run on a zero clip: the exporter
    declares the reshaped outputs' dims symbolic, though only the batch axis varies."""
    session = ort_session(onnx_path, threads=1)
    feed = {
        tensor.name: np.zeros([1, *tensor.shape[1:]], dtype=np.float32)
        for tensor in session.get_inputs()
    }
    names = [output.name for output in session.get_outputs()]
    return {
        name: list(out.shape[1:]) for name, out in zip(names, session.run(names, feed), strict=True)
    }


def _tensors(
    kind: str, values: list[Any], dims_of: dict[str, list[int]], labels_for: str = ''
) -> list[str]:
    lines = [f'{kind} [']
    for index, value in enumerate(values):
        tensor = value.type.tensor_type
        if tensor.elem_type not in _TRITON_TYPES:
            raise ValueError(
                f'{value.name}: ONNX element type {tensor.elem_type} has no Triton type'
            )
        dims = dims_of[value.name]
        lines += [
            '  {',
            f'    name: "{value.name}"',
            f'    data_type: {_TRITON_TYPES[tensor.elem_type]}',
            f'    dims: [ {", ".join(map(str, dims))} ]',
        ]
        if value.name == labels_for:
            lines.append(f'    label_filename: "{LABELS_NAME}"')
        lines.append('  }' + (',' if index < len(values) - 1 else ''))
    return [*lines, ']']


def write_serving_files(
    out_dir: Path,
    onnx_path: Path,
    classes: list[str],
    *,
    name: str,
    image: str,
    storage_uri: str,
) -> dict[str, Path]:
    """Write the InferenceService and the Triton repository under ``out_dir``; returns
    their paths by name relative to ``out_dir`` (``triton/<name>/1/model.onnx``, ...).
    Without ``image`` there is no InferenceService."""
    written = []
    if image:
        manifest = out_dir / INFERENCE_SERVICE_NAME
        service = inference_service(name, image, storage_uri)
        manifest.write_text(yaml.safe_dump(service, sort_keys=False))
        written.append(manifest)
    model_dir = out_dir / TRITON_DIR / name
    (model_dir / '1').mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, model_dir / '1' / 'model.onnx')
    (model_dir / 'config.pbtxt').write_text(triton_config(name, onnx_path))
    (model_dir / LABELS_NAME).write_text(''.join(f'{label}\n' for label in classes))
    written += [model_dir / '1' / 'model.onnx', model_dir / 'config.pbtxt']
    written.append(model_dir / LABELS_NAME)
    return {path.relative_to(out_dir).as_posix(): path for path in written}
