"""A property-based run of the whole HTTP surface against its OpenAPI document
(Schemathesis): whatever the document allows, and much that it does not, no request
makes a real worker answer 5xx.

One worker serves every operation (module scope: starting one per operation would
dominate the run). Its providers point at a closed port on this machine, so
registrations it accepts fail the ordinary way (retries, dead letters) without
leaving the machine; CalDAV URLs are pointed there too before the call, so no
generated host name is ever resolved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from calsync.settings import Settings
from calsync.testing.worker import WorkerProcess
from calsync.web.openapi import document
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, free_port

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there

SCHEMA = schemathesis.openapi.from_dict(document())
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}
#: Positive cases for every operation; negative ones where there is something to get
#: wrong (a parameter or a body): an operation without either has no negative case.
RUNS = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE)
    for label, operation in sorted(OPERATIONS.items())
    if list(operation.iter_parameters()) or list(operation.body)
]


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    unique = uuid.uuid4().hex[:10]
    port = free_port()
    process = WorkerProcess(
        Settings(
            secret_key=SECRET_KEY,
            admin_token=ADMIN_TOKEN,
            kafka_bootstrap=kafka_bootstrap,
            app_id=f"calsync-props-{unique}",
            topic_prefix=f"p{unique}.",
            topic_partitions=2,
            data_dir=tmp_path_factory.mktemp("props"),
            web_port=port,
            public_url=f"http://127.0.0.1:{port}",
            google_api_url=f"{CLOSED}/calendar/v3",
            google_token_url=f"{CLOSED}/token",
            google_client_id="props-client",
            google_client_secret="props-secret",
            graph_api_url=f"{CLOSED}/v1.0",
            microsoft_authority=f"{CLOSED}/common",
            microsoft_client_id="props-client",
            microsoft_client_secret="props-secret",
            max_attempts=2,
            retry_patience=0.0,  # dead-lettered after the attempts, at once
            retry_base_delay=0.2,
            retry_max_delay=1.0,
        )
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def tame(case: Any) -> None:
    """Keep a case on this machine and short: CalDAV URLs to the closed port, ``wait``
    to nothing (a valid wait only delays the same answer)."""
    body = case.body
    if isinstance(body, dict) and body.get("provider") == "caldav":
        body["calendar_id"] = f"{CLOSED}/calendars/props/"
    if isinstance(case.query, dict) and "wait" in case.query:
        case.query["wait"] = "0"


# Schemathesis' own pytest plugin (``from_fixture``) does not run under the pytest this
# project pins, so each operation's strategy is driven by Hypothesis directly.
@pytest.mark.parametrize(("label", "mode"), RUNS)
def test_no_request_gets_a_5xx(label: str, mode: GenerationMode, worker: WorkerProcess) -> None:
    @given(case=OPERATIONS[label].as_strategy(mode))
    @settings(
        # a replay reads the dead-letter topic until it is idle for a second: a few do
        max_examples=3 if "deadletters" in label else 15,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        tame(case)
        response = case.call(base_url=worker.url, headers=AUTH, timeout=60, allow_redirects=False)
        assert response.status_code < 500, (
            case.method,
            case.formatted_path,
            case.query,
            case.body,
            response.status_code,
            response.text[:500],
            worker.tail(20),
        )

    run()
