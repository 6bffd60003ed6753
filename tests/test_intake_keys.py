"""journey intake's write keys as operators rotate them: the file is read again when it changes, and
the metric journey_intake_write_keys follows (without a request in between, and without a restart)."""

from __future__ import annotations

import os
import time

from prometheus_client import generate_latest

from journey.intake.keys import WriteKeys
from journey.intake.service import Intake


def _replace(path, text: str) -> None:
    # as the kubelet updates a mounted Secret: a new file put in place atomically
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _gauge(intake: Intake) -> float:
    for line in generate_latest(intake.metrics.registry).decode().splitlines():
        if line.startswith("journey_intake_write_keys "):
            return float(line.split()[1])
    raise AssertionError("no journey_intake_write_keys sample")


def test_a_rotated_key_file_shows_in_the_keys_and_the_metric(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# senders\nold-key\n")
    keys = WriteKeys(None, str(path))
    intake = Intake("kafka://127.0.0.1:9", keys)   # not started: no broker needed
    assert _gauge(intake) == 1 and keys.valid("old-key") and not keys.valid("new-key")

    _replace(path, "old-key\nnew-key\n")   # rotation, step 1: both keys valid
    time.sleep(1.1)                         # the file is checked at most once a second
    assert _gauge(intake) == 2
    assert keys.valid("new-key") and keys.valid("old-key")

    _replace(path, "new-key\n")            # step 2, once the senders moved: the old key goes
    time.sleep(1.1)
    assert not keys.valid("old-key") and keys.valid("new-key")
    assert _gauge(intake) == 1
