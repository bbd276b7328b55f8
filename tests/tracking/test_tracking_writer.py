"""The durable writer: training goes on while MLflow is unreachable, the queue is sent when it
answers again, and what could not be sent is kept in unsent.jsonl."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import types
from pathlib import Path

import pytest
from helpers import artifact_names, client, free_port, split_sessions, study_obj

from gradmix_tune.tracking import PARENT, ROLE, StudyLogger, Writer


def test_a_full_queue_drops_new_metrics_not_runs(caplog):
    w = Writer("http://127.0.0.1:1", "x", max_pending=3)
    with caplog.at_level(logging.WARNING, logger="gradmix_tune.tracking"):
        for i in range(5):
            w.put("log", "run", {"metrics": [["m", i, 0, i + 1, "epoch"]]})
        w.put("end", "run", {"status": "FINISHED"})
    assert [op[0] for op in w.pending] == ["log", "log", "log", "end"] and w.dropped == 2
    assert "queue for http://127.0.0.1:1 is full" in caplog.text
    shutil.rmtree(w.tmpdir, ignore_errors=True)


def test_files_to_upload_live_in_the_writers_folder():
    w = Writer("sqlite:///x.db", "x")
    p = w.file("a.txt", "text")
    q = w.file("a.txt", b"bytes")
    assert p != q and Path(p).read_text() == "text" and Path(q).read_bytes() == b"bytes"
    assert Path(p).is_relative_to(w.tmpdir) and Path(q).is_relative_to(w.tmpdir)
    shutil.rmtree(w.tmpdir, ignore_errors=True)


class Forwarder:
    """TCP forwarder 127.0.0.1:port -> the real server: 'the server comes back'."""

    def __init__(self, port: int, target: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.target = target
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(x, y):
        try:
            while data := x.recv(65536):
                y.sendall(data)
        except OSError:
            pass
        finally:
            for s in (x, y):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.mark.integration
def test_unreachable_server_queues_then_flushes(tracked_study, caplog):
    """Training goes on while MLflow is down; the queue is sent when it answers again."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    s1, s2 = split_sessions(tracked_study.events)
    done = next(t for _, ev, t, _ in s1 if ev == "complete")
    events = [r for _, ev, t, r in s1 if ev == "result" and t.trial_id == done.trial_id]
    trial = types.SimpleNamespace(trial_id="offline_00000", config=done.config, status="TERMINATED", error_file=None)
    cb = StudyLogger(study_obj("offline"), uri)
    with caplog.at_level(logging.WARNING, logger="gradmix_tune.tracking"):
        t0 = time.monotonic()
        cb.setup()
        cb.trial_start(trial)
        for r in events:
            cb.trial_result(trial, r)
        cb.trial_complete(trial)
        assert time.monotonic() - t0 < 30, "an unreachable server must not hold training up"
        assert "is unavailable" in caplog.text
        assert len(cb.writer.pending) > 5
        fwd = Forwarder(port, tracked_study.server.port)
        try:
            cb.experiment_end([trial])
        finally:
            fwd.close()
        assert "answers again" in caplog.text
    assert cb.spill is None and not cb.writer.pending
    c = client(tracked_study.server.uri)
    exp = c.get_experiment_by_name("offline")
    runs = c.search_runs([exp.experiment_id])
    kid = next(r for r in runs if r.data.tags.get(ROLE) == "trial")
    parent = next(r for r in runs if r.data.tags.get(ROLE) == "parent")
    assert kid.data.tags[PARENT] == parent.info.run_id and kid.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(kid.info.run_id, "seen_acc")] == [1, 2, 3, 4]
    assert {"accuracy_matrix.png", "curve.png", "config.yaml"} <= artifact_names(c, kid.info.run_id)


@pytest.mark.integration
def test_unsent_entries_are_kept_in_a_file(caplog):
    port = free_port()
    cb = StudyLogger(study_obj("never"), f"http://127.0.0.1:{port}")
    cb.close_wait_s = 1.0
    trial = types.SimpleNamespace(trial_id="x_00000", config={"arm": "a", "seed": 0, "factors": {}, "config": {}},
                                  status="TERMINATED", error_file=None)
    with caplog.at_level(logging.WARNING, logger="gradmix_tune.tracking"):
        cb.setup()
        cb.trial_start(trial)
        cb.trial_result(trial, {"kind": "epoch", "global_epoch": 1, "task": 0, "seen_acc": 0.5, "loss": 1.0})
        cb.experiment_end([trial])
    assert cb.spill and os.path.isfile(cb.spill)
    ops = [json.loads(line) for line in Path(cb.spill).read_text().splitlines()]
    assert [o["op"] for o in ops][:2] == ["run", "artifact"]
    assert any(o["op"] == "log" and o["payload"]["metrics"][0][:2] == ["seen_acc", 0.5] for o in ops)
    assert "were not sent" in caplog.text
    shutil.rmtree(os.path.dirname(cb.spill), ignore_errors=True)
