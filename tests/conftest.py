"""Fixtures shared by test modules."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A data cache for one module (its data set generated once), offline digits only."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mp.setenv("AIRSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("AIRSEARCH_MNIST_DIR", raising=False)
        yield
