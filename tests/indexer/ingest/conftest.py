"""Fixtures of the Ray engine's tests: a real 2-node local Ray cluster and the tiny encoder.

Module-scoped, so each Ray test module starts one cluster and tears it down when it ends.
"""

import pytest

from indexer.core.config import ModelConfig


@pytest.fixture(scope="module")
def cluster():
    """A real 2-node local Ray cluster (2 CPUs each), with this process connected to it."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        # No usage reporting from CI (offline anyway): its poller thread outlives the session's log files.
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
        c.add_node(num_cpus=2)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield c
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    """The tiny test ViT-MAE, loaded once per module on the CPU."""
    from indexer.model.encoder import ViTMAEEncoder

    return ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
