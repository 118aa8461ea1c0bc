"""Fixtures of the scale-out tests: skip without the distributed extra; one local Ray."""

from __future__ import annotations

import importlib.util

import pytest

MISSING = [m for m in ("ray", "accelerate") if importlib.util.find_spec(m) is None]


def pytest_collection_modifyitems(config, items):
    if MISSING:
        skip = pytest.mark.skip(
            reason=f"needs the distributed extra ({', '.join(MISSING)} not installed): "
            f"pip install -e '.[distributed]'"
        )
        for item in items:
            if "distributed" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance (2 CPUs, no dashboard) for every test that needs it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
