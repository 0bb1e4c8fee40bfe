"""ray_cluster.yaml is checked against the JSON schema that ships inside the ray wheel, offline."""

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _validate(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_cluster_config_is_valid(cluster):
    _validate(cluster)
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t["resources"].get("GPU", 0) > 0 for t in types.values())
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]
    assert any("scripts/setup.sh" in c for c in cluster["setup_commands"])
    assert (ROOT / "scripts" / "setup.sh").exists()


@pytest.mark.parametrize("breakage,message", [
    ("misspelled_key", "'max_wrokers' was unexpected"),
    ("missing_resources", "'resources' is a required property"),
    ("bad_head_type", "head_node_type` must be one of"),
    ("min_over_max", "smaller than the sum of `min_workers`"),
])
def test_the_schema_check_catches_mistakes(cluster, breakage, message):
    from jsonschema import ValidationError

    bad = copy.deepcopy(cluster)
    if breakage == "misspelled_key":
        bad["max_wrokers"] = bad.pop("max_workers")
    elif breakage == "missing_resources":
        del bad["available_node_types"]["gpu_worker"]["resources"]
    elif breakage == "bad_head_type":
        bad["head_node_type"] = "nonexistent"
    else:
        bad["available_node_types"]["cpu_worker"]["min_workers"] = 50
    with pytest.raises((ValidationError, ValueError), match=message.replace("(", r"\(")):
        _validate(bad)
