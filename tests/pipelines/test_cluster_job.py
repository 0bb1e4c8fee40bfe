"""A real 2-node local Ray cluster (``ray start --head`` plus a second node with its own ports), the curate
job submitted with ``ray job submit --working-dir .``, its output checked, and only our nodes stopped."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.factories import chord_music, silence, tts, write

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_args(ports):
    agent_listen, agent_grpc, node_manager, object_manager, metrics, runtime_env, min_worker = ports
    return ["--block", "--num-cpus", "1", "--dashboard-agent-listen-port", str(agent_listen),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager), "--metrics-export-port", str(metrics),
            "--runtime-env-agent-port", str(runtime_env), "--min-worker-port", str(min_worker),
            "--max-worker-port", str(min_worker + 40), "--object-store-memory", str(200 << 20)]


@pytest.fixture
def two_node_cluster(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    gcs, dashboard, *rest = _free_ports(16)
    head_ports, worker_ports = rest[:7], rest[7:14]
    worker_ports[-1] = head_ports[-1] + 100
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(gcs), "--dashboard-port", str(dashboard),
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", *_node_args(head_ports)],
                            env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
    procs = [head]
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_nodes(address, 1, env)
        worker = subprocess.Popen([RAY, "start", "--address", f"127.0.0.1:{gcs}", *_node_args(worker_ports)],
                                  env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(worker)
        _wait_nodes(address, 2, env)
        yield address, env
    finally:
        for p in reversed(procs):          # our own nodes only: never `ray stop`
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for f in logs:
            f.close()


def _wait_nodes(address, n, env, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([RAY, "list", "nodes", "--address", address, "--format", "json"],
                             capture_output=True, text=True, env=env)
        start = out.stdout.find("[")
        if out.returncode == 0 and start >= 0:
            try:
                nodes = json.loads(out.stdout[start:])
            except json.JSONDecodeError:    # the dashboard is still starting
                nodes = []
            if len([x for x in nodes if x.get("state") == "ALIVE"]) >= n:
                return
        time.sleep(1)
    raise TimeoutError(f"cluster at {address} did not reach {n} nodes")


def test_curate_job_submitted_to_a_two_node_cluster(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    corpus = tmp_path / "corpus"
    for i in range(6):
        write(corpus / f"u{i}.wav", np.concatenate([tts(f"Cluster test sentence {i} for the job.", "en-us"),
                                                    silence(0.5)]))
    write(corpus / "music.wav", chord_music(35.0, seed=1))
    out = tmp_path / "segments"
    job = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
                          "--submission-id", f"curate-{os.getpid()}", "--",
                          sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(out), "ray.progress=false", "labelers=[none]",
                          "shards.max_samples=4"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "audiomill curate summary" in job.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    index = pq.read_table(out / "index.parquet").to_pandas()
    assert manifest["summary"]["inputs_seen"] == 7 and manifest["summary"]["accepted"] == 7
    assert len(index) == manifest["summary"]["segments"] >= 8
    assert len(manifest["shards"]) >= 2
