"""A real multi-node Ray cluster on loopback for the fault tests, run in a child process of its own.

``ray.cluster_utils.Cluster`` starts a head node and worker nodes (each its own raylet, object store and worker
processes) on this machine. It runs in a child process, never in the test process, so the session's ``ray_local``
instance and this cluster cannot meet, and under a private ``RAY_TMPDIR``, so the cluster's address file
(``ray_current_cluster``) cannot make another process's ``ray.init()`` join it.

    with LoopbackCluster(workers=2) as cluster:
        cluster.address            # pass to the job as --address
        cluster.worker_raylets     # pids, to kill a node with SIGKILL
        cluster.pids_titled("ClassifyCrops")   # the classifier actor's worker process(es)

Run as a script (``python tests/cluster_support.py HEAD_CPUS WORKERS``) it is that child: it starts the cluster,
prints one JSON line (address, raylet pids) and keeps the cluster up until its stdin closes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()


class LoopbackCluster:
    """A head node (``head_cpus``) and ``workers`` worker nodes of one CPU each, in a child process."""

    def __init__(self, *, head_cpus: int = 1, workers: int = 2, start_timeout_s: float = 120) -> None:
        self.head_cpus = head_cpus
        self.workers = workers
        self.start_timeout_s = start_timeout_s
        self.temp_dir = ""
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment for processes that use this cluster (a driver passes ``--address`` too)."""
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=self.temp_dir, PYTHONUNBUFFERED="1")
        env.pop("RAY_ADDRESS", None)
        return env

    def __enter__(self) -> "LoopbackCluster":
        # Short: Ray's unix socket paths live under it and must stay under 107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="rf", dir="/tmp")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), str(self.head_cpus), str(self.workers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env,
        )
        line = self.proc.stdout.readline()
        if not line:
            self.__exit__(None, None, None)
            raise RuntimeError("the loopback Ray cluster did not start")
        self.info = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()  # the child shuts the cluster down and exits
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    @property
    def address(self) -> str:
        return self.info["address"]

    @property
    def worker_raylets(self) -> list[int]:
        return self.info["worker_raylets"]

    @property
    def raylets(self) -> list[int]:
        return [self.info["head_raylet"], *self.info["worker_raylets"]]

    def add_worker(self) -> None:
        """Add a worker node (one CPU), e.g. in place of one a test killed."""
        self.proc.stdin.write("add\n")
        self.proc.stdin.flush()
        self.info = json.loads(self.proc.stdout.readline())

    def pids_titled(self, text: str) -> list[int]:
        """Worker processes of this cluster (children of its raylets) whose process title contains ``text``."""
        raylets = set(self.raylets)
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid in raylets and text in cmdline:
                found.append(int(entry.name))
        return found


def _serve(head_cpus: int, workers: int) -> None:
    from ray.cluster_utils import Cluster

    from ray._private import ray_constants

    # A node whose raylet dies is declared dead after about 3 s instead of Ray's default of 15 s or more.
    health = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
              "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "include_dashboard": False, "_system_config": health,
    })
    nodes = [cluster.add_node(num_cpus=1) for _ in range(workers)]
    cluster.wait_for_nodes()

    def raylet_pid(node) -> int:
        return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid

    def alive(node) -> bool:
        return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.poll() is None

    def report() -> None:
        print(json.dumps({
            "address": cluster.address,
            "head_raylet": raylet_pid(cluster.head_node),
            "worker_raylets": [raylet_pid(n) for n in nodes if alive(n)],
        }), flush=True)

    report()
    for line in sys.stdin:  # commands, until the parent closes our stdin (or dies)
        if line.strip() == "add":
            nodes.append(cluster.add_node(num_cpus=1))
            report()
    for node in list(cluster.worker_nodes):
        try:
            cluster.remove_node(node, allow_graceful=False)
        except Exception:  # a node the test killed already
            pass
    cluster.remove_node(cluster.head_node, allow_graceful=False)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
