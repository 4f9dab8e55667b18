"""Two workers on one Redis behind HAProxy (deploy/haproxy.cfg, as shipped): one worker killed
with SIGKILL under load, and SDK clients with their default retries see no failed request."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import pytest

from conftest import ROOT, Proxy, RedisServer, accounts_yaml, free_port, start_all, stop_all

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def balanced(sim, tmp_path) -> Iterator[tuple[str, list[Proxy]]]:
    """(balancer URL, the two workers)."""
    for tool, package in (("redis-server", "redis-server"), ("haproxy", "haproxy")):
        if shutil.which(tool) is None:
            pytest.skip(f"balancer test needs {tool} (apt-get install {package})")
    redis = RedisServer(tmp_path).start()
    yaml = accounts_yaml(sim.url, {"name": "key-a", "api_key": "sk-ant-api03-AAA"},
                         {"name": "key-b", "api_key": "sk-ant-api03-BBB"})
    workers = []
    for i in (1, 2):
        folder = tmp_path / f"worker{i}"
        folder.mkdir()
        workers.append(Proxy(folder, yaml, {"flare_redis": redis.url}, None))
    start_all(workers)
    port = free_port()
    env = {**os.environ, "MITMFLARE_BALANCER_BIND": f"127.0.0.1:{port}",
           "MITMFLARE_WORKER1": f"127.0.0.1:{workers[0].port}",
           "MITMFLARE_WORKER2": f"127.0.0.1:{workers[1].port}"}
    balancer = subprocess.Popen(["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 10
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "haproxy did not start"
        time.sleep(0.1)
    try:
        yield url, workers
    finally:
        balancer.kill()
        balancer.wait(10)
        stop_all(workers)
        redis.stop()


def test_a_worker_killed_under_load_fails_no_client_request(balanced):
    url, (one, two) = balanced
    stop = threading.Event()

    def client_loop(_: int) -> tuple[int, list[str]]:
        client = anthropic.Anthropic(base_url=url, api_key="client")  # default retries (2)
        done, failures = 0, []
        while not stop.is_set():
            try:
                client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
                done += 1
            except anthropic.APIError as error:
                failures.append(repr(error))
        return done, failures

    with ThreadPoolExecutor(6) as pool:
        results = [pool.submit(client_loop, i) for i in range(6)]
        time.sleep(2.0)
        one.proc.kill()  # SIGKILL, mid-load
        time.sleep(3.0)
        stop.set()
        outcomes = [r.result() for r in results]
    answered = sum(done for done, _ in outcomes)
    failures = [f for _, fs in outcomes for f in fs]
    assert failures == [] and answered > 50
    assert two.health()["status"] in ("ok", "degraded")


def test_the_ha_compose_file_and_the_balancer_config_hold_together():
    import yaml
    compose = yaml.safe_load((ROOT / "docker-compose.ha.yml").read_text())
    services = compose["services"]
    workers = [services[n] for n in ("worker1", "worker2")]
    assert {w["environment"]["MITMFLARE_REDIS_URL"] for w in workers} == {"redis://redis:6379/0"}
    assert all("mitmflare-data:/data" in w["volumes"] for w in workers)  # one pair of databases
    balancer = services["balancer"]
    assert balancer["ports"] == ["127.0.0.1:8080:8080"]  # published on this machine only
    if shutil.which("haproxy") is None:
        pytest.skip("checking deploy/haproxy.cfg needs haproxy (apt-get install haproxy)")
    checked = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                             env={**os.environ, **balancer["environment"]},
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
