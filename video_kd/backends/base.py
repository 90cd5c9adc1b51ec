"""What a training backend provides: the interface ``run_training`` relies on.

A backend is a module (``pytorchjob``, ``trainjob``, ``local``), imported on first use
because each brings its own SDK.  A new backend implements one of these protocols and gets
a name in ``BACKENDS``; ``tests/test_backends_protocol.py`` checks each module against its
protocol.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from video_kd.backends.kube import Backoff, JobKind, JobState
from video_kd.backends.spec import TrainingJobSpec


class ClusterBackend(Protocol):
    """A Kubernetes training operator's job: the object to create and how to read it.

    ``video_kd.backends.kube.ClusterJob`` creates, follows and deletes it the same way for
    every such backend.
    """

    KIND: JobKind  # the custom resource (group, version, plural, kind)

    def manifest(self, spec: TrainingJobSpec) -> dict[str, Any]:
        """The object to create, as the API server takes it."""
        ...

    def warnings(self, spec: TrainingJobSpec) -> list[str]:
        """What the user should know about this spec on this backend (logged, not fatal)."""
        ...

    def state(self, obj: dict[str, Any]) -> JobState:
        """Where the job stands, from the object the API server returned."""
        ...

    def log_pod_selector(self, name: str) -> str:
        """The label selector of the pod whose log the step streams (rank 0)."""
        ...

    def pods_selector(self, name: str) -> str:
        """The label selector of all of the job's pods."""
        ...

    def backoff(self, spec: TrainingJobSpec) -> Backoff | None:
        """The restart limit the step enforces, or None where the operator enforces it."""
        ...


class LocalBackend(Protocol):
    """Processes on this machine (torchrun): runs the spec to its end."""

    def run(
        self,
        spec: TrainingJobSpec,
        timeout: float | None = None,
        log_path: str | os.PathLike | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> None:
        """Run every process of the spec; raise ``TrainingJobFailed`` if training fails."""
        ...
