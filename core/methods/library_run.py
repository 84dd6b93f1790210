"""A library's attribution call, which cannot be split, run in resumable steps for the app.

Captum's occlusion, KernelSHAP and LIME and pytorch-grad-cam's Score-CAM and Ablation-CAM each
make hundreds of forwards inside one call that takes seconds to minutes, and the app's worker
may hold the CPU for about a tenth of a second at a time (a slider move waits behind it). So
the call runs in a thread of its own, on a network that lets it through one forward (a few
rows of its batch) at a time: the worker lets it run for a step, then the next forward waits
until the worker asks for the next step. A run left waiting resumes where it was; a run no one
holds any more is stopped at its next forward. The rows of a batch are independent in eval
mode, so cutting a batch changes nothing but the last bits (the maps equal explain's to float
rounding). Only one side runs at a time, and the random generators' states are swapped with the
steps, so that the library draws the same numbers as in one call whatever the worker does between
steps. The exception, `detach`: a forward that cannot be cut (one pass of LRP) on a network of the
run's own, in a call that draws no random numbers, goes on beside the worker once a step's time is
up or a slider move waits.
"""
import threading
import time
import weakref

import numpy as np
import torch
from torch import nn

from core import progress
from core.progress import Progress, Stopped

DETACH_AFTER = 0.05  # seconds a step waits at least before the call goes on beside the worker
POLL = 0.005  # how often a waiting step asks whether it is wanted elsewhere (core.progress.hurry)


class _Gate:
    """Where the library thread waits between steps; a condition both threads share."""

    def __init__(self):
        self.lock = threading.Condition()
        self.deadline = 0.0       # the library may start a forward until then (its step's end)
        self.running = False      # the library thread holds the CPU (the worker waits)
        self.finished = False
        self.cancelled = False
        self.rows = 0             # rows through the network so far
        self.chunk_seconds = 0.0  # the last forward's time: one that would end past the deadline waits
        self.fresh = True         # no forward yet in this step: one always runs
        self.result = None
        self.error: BaseException | None = None

    def enter(self) -> None:
        """Library thread, before a forward: wait for a step if this one's time is up."""
        with self.lock:
            if not self.fresh and time.perf_counter() + self.chunk_seconds > self.deadline:
                self.running = False
                self.lock.notify_all()
                while not (self.running or self.cancelled):
                    self.lock.wait()
            if self.cancelled:
                raise Stopped("the run was dropped")
            self.fresh = False

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            self.lock.notify_all()


class GatedNet(nn.Module):
    """net, with the gate before each forward of at most `chunk` rows (a larger batch is cut)."""

    wraps_network = True  # core.network.neurons.unwrapped looks through it

    def __init__(self, inner: nn.Module, gate: _Gate, chunk: int):
        super().__init__()
        self.inner, self._gate, self.chunk = inner, gate, chunk

    @property
    def masked_forward(self):
        """The pruned network's MaskedForward inside (pathway versions that rebuild the network
        from its masks: DeepLIFT's, LRP's)."""
        return self.inner.masked_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, x.shape[0], self.chunk):
            self._gate.enter()
            began = time.perf_counter()
            outs.append(self.inner(x[start:start + self.chunk]))
            self._gate.chunk_seconds = time.perf_counter() - began
            self._gate.rows += min(self.chunk, x.shape[0] - start)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def _work(gate: _Gate, call, build, x: torch.Tensor, step_seconds: float) -> None:
    """The library thread: the network (build()), gated, then call(it) once; the first step
    pays for both. It holds no reference to its LibraryRun, so that a run no one holds is
    collected and its finaliser cancels the gate."""
    try:
        with gate.lock:
            while not (gate.running or gate.cancelled):
                gate.lock.wait()
        if not gate.cancelled:
            net = build()
            gate.result = call(GatedNet(net, gate, _rows_per_step(net, x, step_seconds)))
    except BaseException as error:  # handed to the worker, which raises it
        gate.error = error
    finally:
        with gate.lock:
            gate.finished, gate.running = True, False
            gate.lock.notify_all()


def _stop(gate: _Gate, thread: threading.Thread) -> None:
    """A run no one holds: its thread, waiting between steps, raises Stopped there and ends."""
    gate.cancel()
    thread.join(timeout=10)


class LibraryRun:
    """call(net) in steps: steps(step_seconds) is a job that returns call's result. build: makes
    the network the call runs on (in the run's thread, which then gates it), e.g. a copy for
    libraries that hook or replace its layers for the whole call (pytorch-grad-cam), which other
    work must not see while the run waits. expected: the rows the call sends through the
    network, for the progress; label: what the progress says. detach: a step may end while the
    call is inside a forward that takes longer, which then goes on beside the worker (only on a
    network of the run's own, and only for calls that draw no random numbers from the global
    generators)."""

    def __init__(self, call, build, x: torch.Tensor, step_seconds: float, expected: int | None,
                 label: str, detach: bool = False):
        self.label, self.expected = label, expected
        self._detach = detach
        self._gate = gate = _Gate()
        self._rng = None  # the library's generator states while it waits
        self._device = x.device
        self._thread = thread = threading.Thread(target=_work, args=(gate, call, build, x, step_seconds),
                                                 name=f"prunescope {label}", daemon=True)
        weakref.finalize(self, _stop, gate, thread)
        thread.start()

    def steps(self, step_seconds: float):
        gate = self._gate
        while True:
            outer = _rng_state(self._device)
            if self._rng is not None:
                _set_rng_state(self._rng, self._device)
            with gate.lock:
                if not gate.finished and not gate.running:
                    gate.deadline, gate.fresh, gate.running = time.perf_counter() + step_seconds, True, True
                    gate.lock.notify_all()
                # detach: a forward that cannot be cut (one pass of LRP) runs on beside the worker
                # after a step's time, on the run's own copy of the network; it pauses at its next one
                give_up = time.perf_counter() + max(step_seconds, DETACH_AFTER) if self._detach else None
                while gate.running and (give_up is None or (time.perf_counter() < give_up and not progress.hurry())):
                    gate.lock.wait(None if give_up is None else POLL)
                detached = gate.running
            if not detached:
                self._rng = _rng_state(self._device)
                _set_rng_state(outer, self._device)
            if gate.finished:
                self._thread.join()  # it is returning: none may outlive the run (or the interpreter)
                break
            done = f"{gate.rows}/{self.expected}" if self.expected else f"{gate.rows}"
            yield Progress(min(0.99, gate.rows / self.expected) if self.expected else 0.5,
                           f"{self.label} {done} forwards")
        if gate.error is not None:
            raise gate.error
        return gate.result


def _rows_per_step(net: nn.Module, x: torch.Tensor, step_seconds: float) -> int:
    """Rows of x's size one forward of net may take to fit in half a step (timed once)."""
    with torch.no_grad():
        net(x)  # the first forward of a network pays for allocations: not timed
        began = time.perf_counter()
        net(x)
        seconds = time.perf_counter() - began
    return int(max(1, min(256, 0.5 * step_seconds / max(seconds, 1e-6))))


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), np.random.get_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    cpu, numpy_state, cuda = state
    torch.set_rng_state(cpu)
    np.random.set_state(numpy_state)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
