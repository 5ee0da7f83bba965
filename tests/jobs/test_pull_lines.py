"""A registry pull's progress reaches the job's log (``peerd logs -f``): layers done, bytes of all."""

from __future__ import annotations

import time

from peerd.executor.contract import PullProgress
from peerd.jobs.jobrun import PullLines
from peerd.jobs.leasedjob import LeasedJob
from protocol.messages import JobSpec, Lease, LeaseTerms

IMAGE = "registry.example/team/model:1"


def job() -> LeasedJob:
    terms = LeaseTerms(task_id="t1", requester="R", provider="P", spec=JobSpec(image=IMAGE, command=("true",)),
                       price=1.0, gpus=(), issued_at=time.time(), expires_at=time.time() + 700)
    return LeasedJob(terms=terms, lease=Lease(terms=b"x", provider_sig=b"", requester_sig=b""))


def lines(leased: LeasedJob) -> list[str]:
    return [c.data.decode() for c in leased.logs]


def test_progress_lines_name_layers_and_bytes_at_most_once_a_second_and_at_each_layer() -> None:
    leased, now = job(), [100.0]
    listen = PullLines(leased, IMAGE, lambda: now[0])
    listen(PullProgress(IMAGE, "Pulling from team/model"))  # no layer: nothing to say
    listen(PullProgress(IMAGE, "Downloading", "a", 1_000_000, 4_000_000))
    listen(PullProgress(IMAGE, "Downloading", "b", 500_000, 2_000_000))
    now[0] += 0.5
    listen(PullProgress(IMAGE, "Downloading", "a", 2_000_000, 4_000_000))  # within the second: quiet
    listen(PullProgress(IMAGE, "Download complete", "b"))
    listen(PullProgress(IMAGE, "Extracting", "b", 100, 9_999_999))  # extraction is not download progress
    assert lines(leased) == [
        "[peerd] pulling registry.example/team/model:1: 0 layer(s) done, 1.0 of 4.0 MB\n",
        "[peerd] pulling registry.example/team/model:1: 1 layer(s) done, 4.0 of 6.0 MB\n",
    ]
    assert leased.logs[0].stream.value == "stderr"
