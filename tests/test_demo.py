"""`journey demo`: the README's first command, run for real (embedded broker, worker, feeder)."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest


def _pump(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, b""):
        out.put(line)
    out.put(b"")  # end of output


@pytest.mark.live
def test_demo_shows_triggers_and_ctrl_c_leaves_nothing_behind(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "journey", "demo", "--customers", "60", "--speed", "200000"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    lines = []
    deadline = time.monotonic() + 90
    # a reader thread, so the deadline holds even when the demo prints nothing at all
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(p.stdout, out), daemon=True).start()
    try:
        while time.monotonic() < deadline:
            try:
                line = out.get(timeout=max(0.1, deadline - time.monotonic())).decode()
            except queue.Empty:
                break
            if not line:
                break
            lines.append(line)
            if sum(" recovery " in x or " recognition " in x for x in lines) >= 3:
                break
        shown = [x for x in lines if " recovery " in x or " recognition " in x]
        assert len(shown) >= 3, "".join(lines[-20:])
        # a trigger line names the rule, the customer, the channel and the reason
        from journey.core.rules import REGISTRY
        from journey.examples import JOURNEYS
        from journey.io.rulefile import load_config

        rules = set(REGISTRY) | set(load_config(JOURNEYS).journeys)  # built-in rules and the demo's journeys
        assert all(any(r in x for r in rules) for x in shown)
        os.killpg(p.pid, signal.SIGINT)   # Ctrl-C reaches the whole foreground group
        p.wait(timeout=60)
        tail = []   # the rest of the output, through the reader thread (it owns the pipe)
        while (chunk := out.get(timeout=10)) != b"":
            tail.append(chunk)
        rest = b"".join(tail).decode()
        assert p.returncode == 0, rest[-2000:]
        # Ctrl-C still ends with the summary and the experiment report (or says why there is none yet)
        # the population went through `journey intake`, sent by Segment's SDK, none of it lost on the way
        assert "(Segment's SDK)" in "".join(lines[:6]), "".join(lines[:6])
        import re

        # the customers answer their messages (section 9's engagement events), through the intake too
        assert re.search(r"[\d,]+ answers to messages", rest), rest[-2000:]
        sent = re.search(r"([\d,]+) events sent through the intake", rest)
        assert sent and int(sent.group(1).replace(",", "")) > 0 and "could not send" not in rest, rest[-2000:]
        assert ("experiments:" in rest or "no experiment outcomes yet" in rest), rest[-2000:]
        assert not (tmp_path / "journey-data").exists()  # the demo keeps nothing in the working directory
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    time.sleep(0.5)
    try:
        os.killpg(p.pid, 0)
        left = subprocess.run(["pgrep", "-g", str(p.pid), "-a"], capture_output=True, text=True).stdout
        raise AssertionError(f"processes left behind: {left}")
    except ProcessLookupError:
        pass
