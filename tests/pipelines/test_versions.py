"""Dataset versions: publish is atomic and idempotent (a publisher killed at every step leaves no visible
version, and the next publish cleans up), verify finds corruption, diff and lineage trace samples to raw files,
load gives webdataset / HF / Ray views, garbage collection respects parents, and all of it works on a real
S3 server on loopback (moto's server through s3fs)."""

import json
import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.registry import Registry, RegistryError
from pipelines.versions import diff, lineage, load, verify

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_publish_verify_diff_lineage_and_load(outputs, tmp_path):
    seg, seg2, ex = outputs
    reg = Registry(str(tmp_path / "reg"))
    v, new = reg.publish(str(seg))
    again, new_again = reg.publish(str(seg))
    assert new and not new_again and again.ref == v.ref and v.ref.startswith("vt@") and len(v.version) == 16
    e, _ = reg.publish(str(ex))
    assert e.parents == (v.ref,) and e.layer == "examples" and e.config["inputs"] == [str(seg)]
    assert {r[0].rsplit("/", 1)[1] for r in v.raw_inputs} == {"s0.wav", "s1.wav", "music.wav"}
    assert verify(reg.url, v.ref) == [] and verify(reg.url, e.ref) == []
    assert [x.ref for x in reg.versions()] == sorted([v.ref, e.ref], key=lambda r: (r.split("@")[0], r))
    v2, _ = reg.publish(str(seg2))
    d = diff(v.ref, v2.ref, reg.url)
    assert len(d["added"]) == 1 and not d["removed"] and not d["changed"]
    assert d["hours"]["kind"]["speech"]["change"] > 0
    sample = next(iter(load(e.ref, reg.url, stage="pretrain")))
    rec = json.loads(sample["json"])
    trace = lineage(reg.url, e.ref, rec["id"])
    raw = trace["sample"]["segments"][0]
    assert raw["version"] == v.ref and raw["raw_file"].endswith(".wav") and len(raw["raw_sha256"]) == 64
    assert [c["version"] for c in trace["versions"]] == [e.ref, v.ref]
    assert trace["versions"][0]["config"]["split"]["eval_fraction"] == 0
    hf = load(v.ref, reg.url, as_="hf")
    assert len(hf) == v.summary["segments"] and "flac" in hf.column_names
    ds = load(v.ref, reg.url, as_="ray")
    assert ds.count() == v.summary["segments"]
    with pytest.raises(RegistryError, match="parent of"):
        reg.gc(v.ref)
    reg.gc(e.ref)
    reg.gc(v.ref)
    assert v.ref not in [x.ref for x in reg.versions()]


def test_verify_and_the_trainer_find_a_corrupted_shard(outputs, tmp_path):
    _, _, ex = outputs
    reg = Registry(str(tmp_path / "reg"))
    e, _ = reg.publish(str(ex))
    shard = Path(reg.data_url(e)) / "sft" / "examples-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000:2100] = bytes(100)
    shard.write_bytes(bytes(data))
    problems = verify(reg.url, e.ref)
    assert len(problems) == 1 and problems[0].startswith("sft/examples-000000.tar: sha256")
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "verify", reg.url, e.ref], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 1 and "sft/examples-000000.tar: sha256" in out.stdout and "1 problems" in out.stdout
    from trainer.data import SkipCounter, read_all

    errors = SkipCounter(max_fraction=1.0)
    read = list(read_all([str(shard)], errors))
    assert errors.skipped >= 1 and len(read) + errors.skipped >= 1
    assert str(shard) in errors.errors[0]            # the message names the shard


KILLER = textwrap.dedent("""
    import os, sys
    from pipelines.registry import Registry
    steps = []
    def step(name):
        steps.append(name)
        if len(steps) == int(sys.argv[3]):
            os._exit(9)
    Registry(sys.argv[1]).publish(sys.argv[2], on_step=step)
    print("done", len(steps))
""")


def test_a_publisher_killed_at_any_step_leaves_no_visible_version(outputs, tmp_path):
    seg, _, _ = outputs
    reg_url = str(tmp_path / "reg")
    k = 1
    while True:
        out = subprocess.run([sys.executable, "-c", KILLER, reg_url, str(seg), str(k)], capture_output=True,
                             text=True, cwd=ROOT)
        reg = Registry(reg_url)
        if out.returncode == 0:
            break
        assert out.returncode == 9, out.stderr
        visible = reg.versions()
        if visible:                                   # killed after the final write: complete and valid
            assert verify(reg_url, visible[0].ref) == []
        data = Path(reg_url) / "vt" / "data"
        leftovers = list(data.iterdir()) if data.exists() else []
        assert len(leftovers) <= 1 + len(visible)     # at most the dead run's folder
        k += 1
    assert k > 6 and "done" in out.stdout            # every step was tried
    v = reg.versions()[0]
    assert verify(reg_url, v.ref) == []
    reg.clean("vt")
    assert [p.name for p in (Path(reg_url) / "vt" / "data").iterdir()] == [v.data.split("/")[1]]
    assert not list((Path(reg_url) / "vt" / "staging").iterdir())


def _publish(args):
    reg, out = args
    v, _ = Registry(reg).publish(out)
    return v.ref


def test_concurrent_publishes_do_not_corrupt_each_other(outputs, tmp_path):
    seg, seg2, ex = outputs
    reg = str(tmp_path / "reg")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        refs = pool.map(_publish, [(reg, str(seg)), (reg, str(seg2)), (reg, str(ex)), (reg, str(seg))])
    assert refs[0] == refs[3] and len(set(refs)) == 3
    assert all(verify(reg, r) == [] for r in set(refs))
    assert len(list((Path(reg) / "vt" / "data").iterdir())) == 2


@pytest.fixture
def s3(tmp_path):
    """moto's S3 server on a loopback port, and fsspec pointed at it."""
    import socket

    import fsspec
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import os

    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "FSSPEC_S3_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.config.conf.setdefault("s3", {})["client_kwargs"] = {"endpoint_url": endpoint}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("audiomill-test")
    yield "s3://audiomill-test"
    fsspec.config.conf.pop("s3", None)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def test_publish_verify_diff_and_load_on_s3(outputs, s3):
    seg, seg2, ex = outputs
    reg = Registry(f"{s3}/registry")
    v, new = reg.publish(str(seg))
    assert new and reg.data_url(v).startswith("s3://")
    assert reg.publish(str(seg)) == (v, False)
    v2, _ = reg.publish(str(seg2))
    e, _ = reg.publish(str(ex))
    assert e.parents == (v.ref,)
    assert verify(reg.url, v.ref) == [] and verify(reg.url, e.ref) == []
    d = diff(v.ref, v2.ref, reg.url)
    assert len(d["added"]) == 1
    samples = list(load(e.ref, reg.url, stage="sft"))
    assert samples and all(s["__url__"].startswith("s3://") for s in samples)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    shard = f"{reg.data_url(e)}/sft/examples-000000.tar".removeprefix("s3://")
    fs.pipe(shard, fs.cat(shard)[:-2048])                  # a truncated upload
    assert any("sft/examples-000000.tar" in p for p in verify(reg.url, e.ref))
