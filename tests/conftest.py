"""Shared test settings for a small shared machine.

- a modest hypothesis profile;
- one torch thread per process: ``make test`` runs ``pytest -n 2`` (two worker processes on two cores),
  and several OpenMP threads per worker on an oversubscribed machine make tensor code 10–20× slower
  (measured). Results do not depend on the thread count (tests/test_estimate.py checks it).
"""

import warnings

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("softhard", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("softhard")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_lm_small(tmp_path_factory):
    """``softhard:tiny-lm`` in its test configuration (``tinylm.SMALL``), trained once per test process into an
    empty cache (as on CI)."""
    pytest.importorskip("transformers")
    from softhard.inspect.tinylm import SMALL, tiny_lm

    return tiny_lm(SMALL, cache_dir=tmp_path_factory.mktemp("softhard-cache"))


@pytest.fixture(scope="session")
def digits_moe():
    """``softhard:digits`` (the digits MoE, seed 0), trained once per test process."""
    pytest.importorskip("sklearn")
    from softhard.inspect import train_digits_moe

    return train_digits_moe(0)


@pytest.fixture
def quiet_transformers():
    """transformers without its log lines, progress bars and warnings (tiny random models warn a lot)."""
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    """The model cache of the zoo's test-sized models: ``$SOFTHARD_CACHE`` when set (trained once, then read back;
    the cache key holds the whole configuration, so they never stand in for the full-size models), else an empty
    folder per test process (as on CI, where each is trained in seconds)."""
    import os
    from pathlib import Path

    env = os.environ.get("SOFTHARD_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("softhard-zoo-cache")


@pytest.fixture(scope="session")
def deepseek_lm_small(zoo_cache):
    """``softhard:deepseek-lm`` in its test configuration (``zoo.models.DEEPSEEK_SMALL``), trained once per test
    process."""
    pytest.importorskip("transformers")
    from softhard.inspect.zoo.models import zoo_lm

    return zoo_lm("softhard:deepseek-lm", small=True, cache_dir=zoo_cache)


@pytest.fixture(scope="session")
def qwen_lm_small(zoo_cache):
    """``softhard:qwen-lm`` in its test configuration (``zoo.models.QWEN_SMALL``), trained once per test process."""
    pytest.importorskip("transformers")
    from softhard.inspect.zoo.models import zoo_lm

    return zoo_lm("softhard:qwen-lm", small=True, cache_dir=zoo_cache)


def pytest_configure(config):
    """`make test` output without noise: off a terminal, pytest-xdist's quiet mode prints "bringing up nodes..."
    once per worker start-up instead of a status line; nothing is lost by not printing it."""
    if config.option.verbose < 0:  # -q (on a terminal the status line is redrawn in place and this prints nothing)
        try:
            from xdist.dsession import TerminalDistReporter
        except ImportError:  # pragma: no cover - run without xdist
            return
        TerminalDistReporter.ensure_show_status = lambda self: None


def pytest_unconfigure(config):
    """Hypothesis times garbage collection with a ``gc.callbacks`` hook that lives until the interpreter ends; an
    xdist worker stopped during a collection then prints a KeyboardInterrupt traceback from it (issue 23). The
    session is over here: remove the hook."""
    import gc

    gc.callbacks[:] = [cb for cb in gc.callbacks if not getattr(cb, "__module__", "").startswith("hypothesis")]
