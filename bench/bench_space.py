"""Load test of the Gradio Space: N concurrent `gradio_client` requests against the app's queue.

Starts `spaces_demo/app.py` on 127.0.0.1 (or targets `--url`), sends `--requests` simultaneous requests
for one clip, one client per request as N users would, checks that every answer is the label the
`transformers` pipeline predicts for the same clip, and prints p50/p95 latency and throughput as JSON.

    python bench/bench_space.py --model runs/ravdess/models/mise-audio-classifier --clip clip.wav --requests 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "spaces_demo" / "app.py"
API_NAME = "/classify"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve_app(
    model: str | os.PathLike,
    *,
    env: dict[str, str] | None = None,
    concurrency: int | None = None,
    startup_timeout: float = 180.0,
) -> Iterator[tuple[str, Path]]:
    """Run the Space in a subprocess on a free 127.0.0.1 port; yields `(url, log_path)` once it answers.

    The process (and its log file, which holds stdout and stderr) is removed on exit.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    environment = dict(os.environ)
    environment.update(
        MISE_MODEL=str(model),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
    )
    if concurrency is not None:
        environment["MISE_CONCURRENCY"] = str(concurrency)
    environment.update(env or {})
    log_dir = Path(tempfile.mkdtemp(prefix="mise-space-"))
    log_path = log_dir / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(APP)], cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the Space exited with code {process.returncode}:\n{log_path.read_text()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Space did not answer on {url} within {startup_timeout:.0f} s")
            time.sleep(0.5)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def expected_label(model: str, clip: str) -> str:
    """Top label of `pipeline("audio-classification")` for the clip: the reference every answer must match."""
    from transformers import pipeline

    import modeling_mise  # noqa: F401  (registers the MISE classes)

    return pipeline("audio-classification", model=str(model))(clip, top_k=1)[0]["label"]


def run_load(url: str, clip: str, requests: int) -> tuple[list[str], list[float], float]:
    """Send `requests` simultaneous requests, one client each; returns labels, latencies and wall time (s)."""
    from gradio_client import Client, handle_file

    clients = [Client(url, verbose=False) for _ in range(requests)]
    start_together = threading.Barrier(requests + 1)

    def one(client: Client) -> tuple[str, float]:
        start_together.wait()
        started = time.perf_counter()
        label, _ = client.predict(handle_file(clip), "", api_name=API_NAME)
        return (label or {}).get("label", ""), time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=requests) as pool:
        futures = [pool.submit(one, client) for client in clients]
        start_together.wait()
        started = time.perf_counter()
        answers = [future.result() for future in futures]
        wall = time.perf_counter() - started
    return [label for label, _ in answers], [latency for _, latency in answers], wall


def summarize(labels: list[str], latencies: list[float], wall: float, expected: str) -> dict:
    """Correctness, latency percentiles (s) and throughput (requests/s) of one load run."""
    seconds = np.asarray(latencies)
    return {
        "requests": len(labels),
        "correct": sum(label == expected for label in labels),
        "expected_label": expected,
        "labels": sorted(set(labels)),
        "latency_s": {
            "p50": round(float(np.percentile(seconds, 50)), 4),
            "p95": round(float(np.percentile(seconds, 95)), 4),
            "min": round(float(seconds.min()), 4),
            "max": round(float(seconds.max()), 4),
            "mean": round(float(seconds.mean()), 4),
        },
        "wall_s": round(wall, 4),
        "throughput_rps": round(len(labels) / wall, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clip", required=True, help="audio file sent by every request")
    parser.add_argument(
        "--model",
        default=os.environ.get("MISE_MODEL", str(REPO_ROOT / "runs/ravdess/models/mise-audio-classifier")),
        help="classifier folder or Hub id served by the app (default: MISE_MODEL, else the `make train` output)",
    )
    parser.add_argument("--requests", type=int, default=20, help="simultaneous requests (default 20)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="the app's queue concurrency limit (default: the app's, 2)",
    )
    parser.add_argument("--url", default=None, help="benchmark a running Space instead of starting one")
    parser.add_argument("--expected_label", default=None, help="reference label (default: the pipeline's)")
    parser.add_argument("--output", default=None, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error(f"--requests must be >= 1, got {args.requests}")
    if not Path(args.clip).is_file():
        parser.error(f"--clip: no such file {args.clip!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit code 1 when any answer differs from the reference label."""
    args = parse_args(argv)
    expected = args.expected_label or expected_label(args.model, args.clip)
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            url, _ = stack.enter_context(serve_app(args.model, concurrency=args.concurrency))
        from gradio_client import Client, handle_file

        Client(url, verbose=False).predict(handle_file(args.clip), "", api_name=API_NAME)  # warm-up
        labels, latencies, wall = run_load(url, args.clip, args.requests)
    report = summarize(labels, latencies, wall, expected)
    report.update(
        clip=Path(args.clip).name,
        # a Space given by --url has its own limit, unknown here
        concurrency_limit=args.concurrency
        or (int(os.environ.get("MISE_CONCURRENCY", "2")) if args.url is None else None),
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0 if report["correct"] == report["requests"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
