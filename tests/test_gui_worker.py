"""The GUI's single background worker: latest request wins, stale results are dropped, errors are
reported, urgent jobs pause preemptible ones, shutdown ends the thread. No torch needed."""
import threading
import time

import pytest

from core.progress import Progress, Stopped
from gui.parts.context import AppContext
from gui.parts.worker import PRIORITY_BACKGROUND, PRIORITY_LIVE


@pytest.fixture
def context(qtbot):
    ctx = AppContext()
    yield ctx
    assert ctx.shutdown(3000)


def counting(value, steps=3, delay=0.0, threads=None):
    def factory():
        if threads is not None:
            threads.add(threading.get_ident())
        for i in range(steps):
            time.sleep(delay)
            yield Progress(i / steps, f"step {i}")
        return value
    return factory


def test_latest_request_of_a_key_wins(qtbot, context):
    results, threads = [], set()
    for value in range(20):
        context.run_job(counting(value, delay=0.01, threads=threads), results.append, key="k")
    qtbot.waitUntil(context.is_idle, timeout=5000)
    qtbot.wait(50)
    assert results == [19]
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_jobs_of_different_keys_all_deliver_in_priority_order(qtbot, context):
    order = []
    gate, running = threading.Event(), threading.Event()

    def blocker():
        running.set()
        gate.wait(5)
        yield Progress(1.0)
        return "blocker"

    context.run_job(blocker, order.append, key="first")
    assert running.wait(5)
    context.run_job(counting("background"), order.append, key="b", priority=PRIORITY_BACKGROUND)
    context.run_job(counting("live"), order.append, key="a", priority=PRIORITY_LIVE)
    gate.set()
    qtbot.waitUntil(lambda: len(order) == 3, timeout=5000)
    assert order == ["blocker", "live", "background"]


def test_error_goes_to_on_error_and_worker_keeps_going(qtbot, context):
    errors, results = [], []

    def broken():
        yield Progress(0.0)
        raise ValueError("bad input")

    context.run_job(broken, results.append, on_error=errors.append, key="x")
    context.run_job(counting(7), results.append, key="y")
    qtbot.waitUntil(lambda: results == [7], timeout=5000)
    assert len(errors) == 1 and str(errors[0]) == "bad input"


def test_error_without_handler_is_signalled(qtbot, context):
    def broken():
        raise RuntimeError("boom")

    with qtbot.waitSignal(context.job_error, timeout=5000) as blocker:
        context.run_job(broken, lambda r: None)
    assert blocker.args[0] == "RuntimeError: boom"


def test_urgent_job_pauses_a_preemptible_one_which_resumes_where_it_was(qtbot, context):
    starts, steps, results = [], [], []

    def long_job():
        starts.append(time.monotonic())
        for i in range(40):
            time.sleep(0.01)
            steps.append(i)
            yield Progress(i / 40)
        return "long"

    context.run_job(long_job, results.append, key="curves", priority=PRIORITY_BACKGROUND,
                    preemptible=True)
    qtbot.waitUntil(lambda: len(steps) > 2, timeout=5000)
    context.run_job(counting("live"), results.append, key="live", priority=PRIORITY_LIVE)
    qtbot.waitUntil(lambda: len(results) == 2, timeout=5000)
    assert results == ["live", "long"]
    assert len(starts) == 1 and steps == list(range(40))  # no step was run twice


def test_after_a_quiet_job_less_urgent_ones_wait_and_as_urgent_ones_do_not(qtbot, context):
    """A slider move's map (quiet_s): the worker stays free for the drag's next move."""
    order, started, ended = [], {}, {}

    def job(name):
        def factory():
            started[name] = time.monotonic()
            yield Progress(0.0)
            ended[name] = time.monotonic()  # on the worker, before the quiet time starts
            return name
        return factory

    context.run_job(job("move"), order.append, key="live", priority=PRIORITY_LIVE, quiet_s=0.5)
    qtbot.waitUntil(lambda: order == ["move"], timeout=5000)
    context.run_job(job("curves"), order.append, key="curves", priority=PRIORITY_BACKGROUND, preemptible=True)
    qtbot.wait(100)
    assert "curves" not in started
    context.run_job(job("next move"), order.append, key="live", priority=PRIORITY_LIVE)
    qtbot.waitUntil(lambda: len(order) == 3, timeout=5000)
    assert order == ["move", "next move", "curves"]
    assert started["next move"] - ended["move"] < 0.4  # at once, not after the quiet time
    assert started["curves"] - ended["next move"] >= 0.0  # the next move came first
    assert started["curves"] - ended["move"] >= 0.5  # the first move's quiet time, counted from its end


def test_a_paused_job_cancelled_in_the_queue_is_closed_on_the_worker(qtbot, context):
    closed, gate, results = [], threading.Event(), []

    def long_job():
        try:
            for i in range(40):
                time.sleep(0.01)
                yield Progress(i / 40)
        finally:
            closed.append(threading.get_ident())

    def blocker():
        gate.wait(5)
        yield Progress(1.0)
        return "live"

    context.run_job(long_job, results.append, key="curves", priority=PRIORITY_BACKGROUND,
                    preemptible=True)
    qtbot.wait(50)
    context.run_job(blocker, results.append, key="live", priority=PRIORITY_LIVE)
    qtbot.wait(50)  # the long job is paused in the queue, the blocker runs
    context.cancel("curves")
    gate.set()
    qtbot.waitUntil(context.is_idle, timeout=5000)
    qtbot.wait(50)
    assert results == ["live"]
    assert len(closed) == 1 and closed[0] != threading.get_ident()


def test_a_kept_running_job_delivers_and_the_next_request_follows_it(qtbot, context):
    gate, results = threading.Event(), []

    def first():
        gate.wait(5)
        yield Progress(1.0)
        return "first"

    context.run_job(first, results.append, key="live", priority=PRIORITY_LIVE, keep_running=True)
    qtbot.wait(50)
    for value in ("second", "third"):  # "second" waits, then "third" replaces it
        context.run_job(counting(value), results.append, key="live", priority=PRIORITY_LIVE,
                        keep_running=True)
    gate.set()
    qtbot.waitUntil(context.is_idle, timeout=5000)
    qtbot.wait(50)
    assert results == ["first", "third"]


def test_a_kept_running_job_may_stop_for_a_newer_request_and_the_one_after_it_finishes(qtbot, context):
    """A job that polls stop_requested inside its step gives up for a newer request (nothing is
    delivered for it); the job that takes its place is not asked to stop, so that requests
    arriving faster than jobs finish still get answers."""
    results, asked = [], []
    started = [threading.Event() for _ in range(3)]

    def stoppable(value, index):
        def factory():
            started[index].set()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # one long step, as a masked forward is
                if context.stop_requested():
                    asked.append(value)
                    raise Stopped(value)
                time.sleep(0.005)
            yield Progress(1.0)
            return value
        return factory

    def submit(value, index):
        context.run_job(stoppable(value, index), results.append, key="live", priority=PRIORITY_LIVE,
                        keep_running=True)

    submit("first", 0)
    assert started[0].wait(5)
    submit("second", 1)  # "first" stops for it
    assert started[1].wait(5)
    submit("third", 2)  # "second" took the place of a job that stopped: it finishes
    qtbot.waitUntil(context.is_idle, timeout=10000)
    qtbot.wait(50)
    assert asked == ["first"] and results == ["second", "third"]
    assert not context.stop_requested()  # outside a job, nothing asks


def test_a_job_that_stops_when_nobody_asked_is_reported_as_failed(qtbot, context):
    errors = []

    def faulty():
        raise Stopped("by itself")
        yield Progress(1.0)

    context.run_job(faulty, errors.append, on_error=errors.append, key="live", keep_running=True)
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert isinstance(errors[0], Stopped)


def test_cancel_stops_a_job_at_its_next_step(qtbot, context):
    steps, results = [], []
    closed = threading.Event()

    def endless():
        try:
            while True:
                time.sleep(0.01)
                steps.append(1)
                yield Progress(0.5)
        finally:
            closed.set()

    context.run_job(endless, results.append, key="k")
    qtbot.waitUntil(lambda: len(steps) > 3, timeout=5000)
    context.cancel_running()
    assert closed.wait(2)
    qtbot.waitUntil(context.is_idle, timeout=2000)
    assert results == []


def test_shutdown_ends_a_running_job(qtbot):
    ctx = AppContext()
    closed = threading.Event()

    def endless():
        try:
            while True:
                time.sleep(0.01)
                yield Progress(0.5)
        finally:
            closed.set()

    ctx.run_job(endless, lambda r: None)
    qtbot.wait(50)
    assert ctx.shutdown(2000)
    assert closed.is_set()


def test_a_result_is_delivered_once_even_if_a_preemption_lands_while_it_is_sent(qtbot):
    from PySide6.QtCore import Qt

    from gui.parts.worker import JobRunner

    runner = JobRunner()
    delivered = []

    def on_returned(job_id, value):  # on the worker thread, while the result is being sent
        delivered.append(value)
        if value == "background":
            runner.submit(counting("live", steps=1), "live", PRIORITY_LIVE, False)

    runner.returned.connect(on_returned, Qt.ConnectionType.DirectConnection)
    runner.start()
    try:
        runner.submit(counting("background"), "bg", PRIORITY_BACKGROUND, True)
        qtbot.waitUntil(lambda: "live" in delivered and runner.is_idle(), timeout=5000)
        assert delivered == ["background", "live"]
    finally:
        assert runner.stop(3000)


def test_a_cancel_as_an_image_opens_leaves_the_context_as_the_screen_is(qtbot, context, monkeypatch):
    from pathlib import Path

    import core.models.loading
    from gui.parts.context import ModelChoice

    class FakeEngine:
        def __init__(self, path):
            self.prediction = f"prediction of {path.name}"

    def build(_model, path, _target):
        if path.name == "b.png":
            context.cancel("engine")  # the user's Cancel, just as the engine is ready
        return FakeEngine(path)

    monkeypatch.setattr(core.models.loading, "load_model", lambda *args, **kwargs: "model")
    monkeypatch.setattr(AppContext, "_build_engine", staticmethod(build))
    shown = []
    context.load_model(ModelChoice("m"))
    context.open_image(Path("a.png"), on_error=pytest.fail)
    qtbot.waitUntil(context.is_idle, timeout=5000)
    context.image_changed.connect(shown.append)
    context.open_image(Path("b.png"), on_error=pytest.fail)
    qtbot.waitUntil(context.is_idle, timeout=5000)
    qtbot.wait(50)
    assert shown == [] and context.current_image_path() == Path("a.png")
    assert context.current_prediction() == "prediction of a.png"
