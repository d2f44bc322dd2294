"""`lmp serve`'s stop signals while the endpoint starts (the whole start-up, with Ray and Serve, is
in tests/integration/test_serving.py)."""

import os
import signal
import time

import pytest

from lm_pipeline.serving.launch import Stopped, StopSignals


@pytest.fixture
def stop_signals():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield StopSignals()
    for sig, handler in before.items():
        signal.signal(sig, handler)


def wait_for_the_handler():
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the handler runs between bytecodes of this loop
        time.sleep(0.01)


def test_a_signal_while_starting_is_named_by_its_signal_though_ray_renamed_the_interrupt(stop_signals):
    """A signal that lands while start-up waits in Ray's C++ (ray.get inside serve.start or
    serve.run) comes out as a plain KeyboardInterrupt: Ray's check_signals catches what the handler
    raised and its status is raised again as KeyboardInterrupt(). The exit code still says SIGTERM
    (143, not 130), and the endpoint is still shut down."""
    with pytest.raises(Stopped) as stopped:
        with stop_signals.starting():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                wait_for_the_handler()
            except KeyboardInterrupt:
                raise KeyboardInterrupt() from None  # what _raylet.check_signals does with it
    assert stopped.value.signum == signal.SIGTERM
    assert str(stopped.value) == "stopped by SIGTERM while starting"
    assert not stop_signals.started


def test_a_signal_once_started_asks_to_stop_instead_of_raising(stop_signals):
    with stop_signals.starting():
        pass
    assert stop_signals.started
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop_signals.requested.wait(timeout=5)


def test_an_interrupt_without_a_signal_is_left_as_it_is(stop_signals):
    with pytest.raises(KeyboardInterrupt) as interrupted:
        with stop_signals.starting():
            raise KeyboardInterrupt()
    assert type(interrupted.value) is KeyboardInterrupt
