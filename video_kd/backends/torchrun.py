"""``python -m video_kd.backends.torchrun <torchrun arguments>``: torchrun with exit statuses that say
whether to retry.

torchrun exits 1 whatever its workers' statuses were (a worker's exit 2, bad
input, included), so a training pod's exit status cannot tell bad input from a
crash, and the operators' restart rules (PyTorchJob ``ExitCode``: 1-127 fail the
job, 128-255 are retried; the chart TrainingRuntime's podFailurePolicy: exit 2
fails at once) would treat every failure alike.  This runs torchrun's own
``main`` (``torch.distributed.run``, the program behind the ``torchrun``
script) in this process — it reads the ``PET_*`` env both operators set, as
``torchrun`` does — and exits with:

* 0 when every worker succeeded;
* ``BAD_INPUT`` (2) when a worker exited 2 (``errors.UserError``: bad input):
  permanent, the job fails at once;
* ``RETRYABLE`` (128) for any other failure: a worker that crashed or was
  killed, a lost peer or NCCL error, S3 unreachable (a worker's exit 75,
  ``errors.TEMPORARY_FAILURE``), a rendezvous that timed out: the operators
  restart the job, up to its backoff limit;
* 128 + N when torchrun itself got signal N (SIGTERM: pod deleted or preempted);
* torchrun's own usage errors keep argparse's status 2 (a bad command is bad input).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from video_kd.core.errors import BAD_INPUT, one_line

RETRYABLE = 128  # the lowest status the Training Operator's ExitCode policy retries
# What a pod runs instead of `torchrun`: same arguments, same env.
LAUNCHER = ('python', '-m', 'video_kd.backends.torchrun')


def exit_status(worker_exit_codes: Iterable[int]) -> int:
    """The launcher's status for its failed workers' exit codes (negative: killed by a signal):
    BAD_INPUT if any of them reported bad input, else RETRYABLE."""
    return BAD_INPUT if BAD_INPUT in set(worker_exit_codes) else RETRYABLE


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv`` (default: this process's arguments); return the status above."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.main(argv)
    except ChildFailedError as failed:  # torchrun has logged each failed worker already
        codes = sorted({failure.exitcode for failure in failed.failures.values()})
        status = exit_status(codes)
        meaning = 'bad input, not retried' if status == BAD_INPUT else 'retried by the operator'
        print(
            f'video_kd.backends.torchrun: workers exited {codes}: exit {status} ({meaning})',
            file=sys.stderr,
        )
        return status
    except SignalException as signalled:
        return 128 + int(signalled.sigval)
    except Exception as exc:  # the launcher itself: rendezvous, store, agent - infrastructure
        print(
            f'video_kd.backends.torchrun: torchrun failed ({type(exc).__name__}: {one_line(exc)}): '
            f'exit {RETRYABLE} (retried by the operator)',
            file=sys.stderr,
        )
        return RETRYABLE
    return 0


if __name__ == '__main__':
    sys.exit(main())
