import os

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the whole test session (start-up costs ~10 s)."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=400 << 20, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def lid_examples(tmp_path_factory):
    """The training demo's example set (spoken-language ID from espeak-ng words), built once; tests that
    change it copy it first."""
    from pipelines.demo_train import build_language_id

    root = tmp_path_factory.mktemp("lid_examples")
    build_language_id(root)
    return root
