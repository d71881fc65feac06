"""Load benchmark: a local Triton server (both layouts) against in-process ``CxrEdge.predict``.

    python tools/bench_triton.py                      # demo model, S = 2 and 8, 1 / 4 / 8 clients
    python tools/bench_triton.py --model M.onnx --requests 32 --json out.json

For every S and number of concurrent clients C, the same requests (the bundled sample X-ray,
``--requests`` per configuration, split evenly over the clients) run three ways, one after the
other: C threads calling one in-process ``CxrEdge`` (ONNX Runtime, shared session), and C
threads each with its own ``TritonCxrEdge`` connection to the ``whole`` and to the ``split``
server. Throughput = requests / wall time; p50/p99 of the per-request latencies (with few
requests, p99 is close to the maximum). Overhead = server p50 / in-process p50.

The server's statistics, read before and after each configuration, show what dynamic batching
did: for ``whole`` the image model's requests and executions (several requests per execution =
merged), for ``split`` patchnet's patch requests, executions and mean patches per execution.

Servers: the ``nvidia-pytriton`` wheel's tritonserver from ``tools/make_triton_env.sh``'s
environment, on 127.0.0.1; ``whole`` with one instance, ``split`` with ``--split-instances``
image-model instances (several images in flight, so their patch requests meet in patchnet's
queue) and one Python-backend ``patchnet`` running ONNX Runtime. Both are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.assets import default_model_path, sample_image_path
from cxr_edge.pipeline import CxrEdge
from cxr_edge.triton import protocol
from cxr_edge.triton.client import TritonCxrEdge
from cxr_edge.triton.repository import export_repository
from cxr_edge.triton.server import LocalTritonServer, find_triton_environment

REPO_ROOT = Path(__file__).resolve().parents[1]

Predict = Callable[[], Any]


def run_load(
    make_predict: Callable[[], Predict],
    clients: int,
    requests: int,
    on_start: Callable[[], None] | None = None,
) -> dict[str, float]:
    """``requests`` calls over ``clients`` threads (each with its own ``make_predict()``, warmed
    up by one untimed call): throughput (requests/s) and latency percentiles (ms). ``on_start``
    runs once every client is warm, just before the timed calls."""
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    latencies: list[float] = []
    lock = threading.Lock()
    warm = threading.Barrier(clients + 1)
    go = threading.Barrier(clients + 1)

    def client(count: int) -> None:
        predict = make_predict()
        predict()  # warm-up: connection, server-side buffers (not timed)
        warm.wait()
        go.wait()
        mine = []
        for _ in range(count):
            t0 = time.perf_counter()
            predict()
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, n) for n in per_client]
        warm.wait()
        if on_start is not None:
            on_start()
        go.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - t0
    arr = np.asarray(latencies)
    return {
        "throughput": len(arr) / wall,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "requests": float(len(arr)),
    }


def batching(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    return {
        "inferences": float(requests),
        "executions": float(executions),
        "per_execution": requests / executions if executions else 0.0,
    }


def measure_local(local: CxrEdge, image: str, steps: int, clients: int, requests: int) -> dict[str, Any]:
    """In-process: ``clients`` threads sharing one CxrEdge."""
    return run_load(lambda: lambda: local.predict(image, steps=steps), clients, requests)


def measure_server(
    server: LocalTritonServer, url: str, layout: str, image: str, steps: int, clients: int, requests: int
) -> dict[str, Any]:
    """``clients`` threads, each with its own connection to ``url``; plus the batching the
    server's statistics show for the timed requests."""
    watcher = TritonCxrEdge(server.grpc_url)
    watched = protocol.IMAGE_MODEL if layout == "whole" else protocol.PATCH_MODEL
    before: dict[str, Any] = {}

    def make() -> Predict:
        remote = TritonCxrEdge(url)
        return lambda: remote.predict(image, steps=steps)

    def mark() -> None:
        before.update(watcher.batch_statistics(watched))

    result: dict[str, Any] = run_load(make, clients, requests, on_start=mark)
    result["batching"] = batching(before, watcher.batch_statistics(watched))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_path(), help="ONNX model (default: demo)")
    parser.add_argument("--image", type=Path, default=sample_image_path(), help="X-ray to send")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument(
        "--requests", type=int, nargs="+", default=[16, 8], help="requests per configuration, one per S"
    )
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument(
        "--layouts", nargs="+", choices=list(protocol.LAYOUTS), default=list(protocol.LAYOUTS)
    )
    parser.add_argument(
        "--split-instances", type=int, default=4, help="image-model instances of the split layout"
    )
    parser.add_argument(
        "--env", type=Path, default=Path(os.environ.get("CXR_EDGE_TRITON_ENV", REPO_ROOT / ".venv-triton"))
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if len(args.requests) not in (1, len(args.steps)):
        parser.error("--requests: one count, or one per --steps value")
    counts = dict(
        zip(args.steps, args.requests * len(args.steps) if len(args.requests) == 1 else args.requests)
    )

    env = find_triton_environment(args.env)
    if env is None:
        parser.error(f"no Triton server environment at {args.env}; run tools/make_triton_env.sh")
    image = str(args.image)
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    servers: dict[str, LocalTritonServer] = {}
    results: list[dict[str, Any]] = []
    try:
        for layout in args.layouts:
            instances = 1 if layout == "whole" else args.split_instances
            repo = work / layout
            export_repository(args.model, repo, layout=layout, instances=instances, patchnet="python")
            servers[layout] = LocalTritonServer(repo, env, workdir=work / f"{layout}-work").start()
        local = CxrEdge.load(args.model, backend="onnxruntime")
        for steps in args.steps:
            for clients in args.clients:
                n = counts[steps]
                row: dict[str, Any] = {"steps": steps, "clients": clients}
                row["in_process"] = measure_local(local, image, steps, clients, n)
                for layout, server in servers.items():
                    url = server.grpc_url if args.protocol == "grpc" else server.http_url
                    row[layout] = measure_server(server, url, layout, image, steps, clients, n)
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.close()

    print(
        f"\nmodel {args.model.name}, image {args.image.name}, protocol {args.protocol}, split instances "
        f"{args.split_instances}; img/s = images per second, latency in ms; overhead = server p50 / "
        "in-process p50; batching: whole = image requests per execution of cxr_edge, split = patches "
        "per execution of patchnet (one request = 256 patches)"
    )
    print("| S | clients | in-process img/s | p50 | p99 | layout | img/s | p50 | p99 | overhead | batching |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")
    for r in results:
        ip = r["in_process"]
        for layout in args.layouts:
            sv, b = r[layout], r[layout]["batching"]
            unit = "requests" if layout == "whole" else "patches"
            print(
                f"| {r['steps']} | {r['clients']} | {ip['throughput']:.2f} | {ip['p50_ms']:.0f} | "
                f"{ip['p99_ms']:.0f} | {layout} | {sv['throughput']:.2f} | {sv['p50_ms']:.0f} | "
                f"{sv['p99_ms']:.0f} | {sv['p50_ms'] / ip['p50_ms']:.2f} | {b['inferences']:.0f} {unit} in "
                f"{b['executions']:.0f} executions ({b['per_execution']:.1f}) |"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
