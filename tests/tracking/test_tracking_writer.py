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
    assert [m.step for m in c.get_metric_history(kid.info.run_id, "epoch/seen_acc")] == [1, 2, 3, 4]
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
    assert any(o["op"] == "log" and o["payload"]["metrics"][0][:2] == ["epoch/seen_acc", 0.5] for o in ops)
    assert "were not sent" in caplog.text
    shutil.rmtree(os.path.dirname(cb.spill), ignore_errors=True)


class Outage(Forwarder):
    """A forwarder that can fail for good: its open connections are cut too, as when a server dies."""

    def __init__(self, port: int, target: int):
        self.conns: list[socket.socket] = []
        super().__init__(port, target)

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a close alone leaves it listening)
        except OSError:
            pass
        super().close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.integration
def test_an_outage_that_outlasts_the_study_is_kept_then_replayed_once(tracked_study, tmp_path, capsys):
    """The server answers at first (the runs and some metrics get there), then goes away for good:
    the rest is kept in spill_dir, artifacts included; `gradmix-tune tracking replay` sends it to
    the real server, into the same runs; replaying it again writes nothing twice."""
    from gradmix_tune.cli import main
    from gradmix_tune.tracking.store import data_key

    port = free_port()
    s1, _ = split_sessions(tracked_study.events)
    done = [t for _, ev, t, _ in s1 if ev == "complete"][:2]
    trials = [types.SimpleNamespace(trial_id=f"outage_{i}", config=t.config, status="TERMINATED", error_file=None)
              for i, t in enumerate(done)]
    results = {t.trial_id: [r for _, ev, tt, r in s1 if ev == "result" and tt.trial_id == d.trial_id]
               for t, d in zip(trials, done)}
    cb = StudyLogger(study_obj("outage"), f"http://127.0.0.1:{port}")
    cb.spill_dir, cb.close_wait_s = str(tmp_path / "unsent"), 1.0
    cb.datasets = {data_key(trials[0].config["config"]["data"]): {
        "name": "digits", "source": "sklearn.datasets.load_digits", "train_size": 300, "test_size": 200,
        "input_shape": [1, 8, 8], "num_classes": 10, "tasks": 2, "class_order": list(range(10)),
        "task_classes": [list(range(5)), list(range(5, 10))]}}
    fwd = Outage(port, tracked_study.server.port)
    cb.setup()
    first = trials[0]
    cb.trial_start(first)
    for r in results[first.trial_id][:2]:  # two epochs reach the server ...
        cb.trial_result(first, r)
    assert cb.writer.flush() and not cb.writer.pending
    fwd.close()  # ... then it is gone
    for r in results[first.trial_id][2:]:
        cb.trial_result(first, r)
    cb.trial_complete(first)
    second = trials[1]
    cb.trial_start(second)
    for r in results[second.trial_id]:
        cb.trial_result(second, r)
    cb.trial_complete(second)
    cb.experiment_end(trials)
    spill = Path(cb.spill)
    assert spill.parent.parent == tmp_path / "unsent" and spill.name == "unsent.jsonl"
    lines = [json.loads(x) for x in spill.read_text().splitlines()]
    assert {x["run_id"] for x in lines if x["key"] == first.trial_id} != {None}, "the run it had is named"
    assert all((spill.parent / x["payload"]["file"]).is_file() for x in lines if x["op"] == "artifact")

    server = tracked_study.server.uri
    for _ in range(2):
        assert main(["tracking", "replay", str(spill), "--tracking-uri", server]) == 0
    first_out, second_out = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "1 runs created" in first_out, first_out  # the second trial's: the parent and the first were there
    assert "0 runs created" in second_out and " 0 metric values, 0 artifacts, 0 datasets, 0 run ends" in second_out
    c = client(server)
    exp = c.get_experiment_by_name("outage")
    got = c.search_runs([exp.experiment_id])
    kids = {r.data.tags["trial_id"]: r for r in got if r.data.tags.get(ROLE) == "trial"}
    assert len(got) == 3 and set(kids) == {t.trial_id for t in trials}, "one parent, one run per trial"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    for t in trials:
        r = kids[t.trial_id]
        epochs = [x["global_epoch"] for x in results[t.trial_id] if x["kind"] == "epoch"]
        assert r.info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(r.info.run_id, "epoch/seen_acc")] == sorted(set(epochs))
        assert len(c.get_metric_history(r.info.run_id, "final_avg_acc")) == 1
        assert {"config.yaml", "accuracy_matrix.png", "curve.png"} <= artifact_names(c, r.info.run_id)
        assert [d.dataset.name for d in c.get_run(r.info.run_id).inputs.dataset_inputs] == ["digits"]
    assert all(r.info.status == "FINISHED" for r in got)
