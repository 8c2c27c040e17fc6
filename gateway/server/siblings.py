"""`/metrics` under `gateway serve --workers N`: one scrape answers for every worker.

The kernel hands a scrape to any one worker (SO_REUSEPORT), and each worker's
registry holds its own counts only. So the `--workers` parent makes a private
folder (mode 0700) and names it in each worker's environment (SIBLINGS_ENV);
each worker serves its own registry's text on a Unix socket there,
`worker-N.sock`. The worker that gets the scrape reads its siblings' sockets
(at most SIBLING_TIMEOUT each) and answers with every worker's series, each
sample labelled `worker="N"`: Prometheus sums them (`sum without (worker)`)
and sees a restarted worker as a counter reset of its own series, the
per-process way the Prometheus docs recommend for counters of several
processes. `gateway_metrics_workers{state}` says how many answered; a worker
being restarted is missing from that scrape, never a failed scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.logs import WORKER_ENV

SIBLINGS_ENV = "GATEWAY_WORKERS_DIR"  # set by the --workers parent: FOLDER:COUNT
SIBLING_TIMEOUT = 1.0  # seconds a scrape waits for one sibling's text


def socket_path(folder: Path, worker: str) -> Path:
    return folder / f"worker-{worker}.sock"


async def serve_registry(folder: Path, worker: str, render: Callable[[], bytes]) -> asyncio.Server:
    """This worker's registry, as text, to whoever connects to its socket in `folder`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(render())
            await writer.drain()
        except ConnectionError:
            pass  # the asking worker gave up (its timeout)
        finally:
            writer.close()

    path = socket_path(folder, worker)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by this worker's previous process (it was restarted)
    return await asyncio.start_unix_server(answer, path=str(path))


async def _read_sibling(path: Path) -> bytes | None:
    try:
        async with asyncio.timeout(SIBLING_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                return await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None  # restarting, stopping, or stuck: missing from this scrape


async def gather(folder: Path, worker: str, count: int, own: bytes) -> bytes:
    """Every worker's series in one text exposition, each sample labelled with its worker."""
    siblings = [str(n) for n in range(1, count + 1) if str(n) != worker]
    texts = await asyncio.gather(*(_read_sibling(socket_path(folder, n)) for n in siblings))
    by_worker = {worker: own}
    for sibling, text in zip(siblings, texts, strict=True):
        if text is not None:
            by_worker[sibling] = text
    registry = CollectorRegistry()
    registry.register(_Merged(by_worker, missing=count - len(by_worker)))
    return generate_latest(registry)


class _Merged:
    """The families of every worker's text, their samples labelled `worker`."""

    def __init__(self, by_worker: dict[str, bytes], missing: int) -> None:
        self._by_worker = by_worker
        self._missing = missing

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for worker, text in sorted(self._by_worker.items()):
            for family in text_string_to_metric_families(text.decode()):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                merged.samples.extend(
                    Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp)
                    for s in family.samples
                )
        yield from families.values()
        states = GaugeMetricFamily(
            "gateway_metrics_workers",
            "Workers in this scrape (answered) and workers that did not answer in time (missing)",
            labels=["state"],
        )
        states.add_metric(["answered"], len(self._by_worker))
        states.add_metric(["missing"], self._missing)
        yield states


def siblings_folder() -> tuple[Path, str, int] | None:
    """(the folder, this worker's number, the number of workers) under --workers; None
    in a single process."""
    given, worker = os.environ.get(SIBLINGS_ENV), os.environ.get(WORKER_ENV)
    if not given or not worker:
        return None
    folder, _, count = given.rpartition(":")
    return Path(folder), worker, int(count)
