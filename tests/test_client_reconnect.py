"""`job_events` follows a job across a server drain: UNAVAILABLE resumes after the last event seen."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.v1 import training_pb2, training_pb2_grpc


class Draining(training_pb2_grpc.TrainingServiceServicer):
    """Answers each StreamJobEvents call with the next script entry: (events, then the status that ends it)."""

    def __init__(self, script: list[tuple[list[int], grpc.StatusCode | None]]) -> None:
        self.script = script
        self.requests: list[tuple[int, bool]] = []

    def StreamJobEvents(self, request, context) -> Iterator[training_pb2.StreamJobEventsResponse]:
        self.requests.append((request.after_sequence, request.no_follow))
        events, ending = self.script.pop(0) if self.script else ([], grpc.StatusCode.INTERNAL)
        for sequence in events:
            yield training_pb2.StreamJobEventsResponse(event=training_pb2.JobEvent(sequence=sequence, message="e"))
        if ending is not None:
            context.abort(ending, "the server is shutting down; reconnect")


@pytest.fixture()
def serve():
    servers: list[grpc.Server] = []

    def start(servicer: Draining) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def test_a_followed_stream_resumes_after_the_last_event_through_drains(serve) -> None:
    servicer = Draining([([1, 2, 3], grpc.StatusCode.UNAVAILABLE), ([], grpc.StatusCode.UNAVAILABLE), ([4, 5], None)])
    with TuneforgeClient(serve(servicer)) as client:
        seen = [event.sequence for event in client.job_events("job-x", after_sequence=0)]
    assert seen == [1, 2, 3, 4, 5]  # nothing missed, nothing repeated
    assert servicer.requests == [(0, False), (3, False), (3, False)]


def test_only_unavailable_is_retried_and_only_while_following(serve) -> None:
    once = Draining([([1], grpc.StatusCode.UNAVAILABLE)])
    with TuneforgeClient(serve(once)) as client, pytest.raises(TuneforgeError) as info:
        list(client.job_events("job-x", follow=False))
    assert info.value.code == "UNAVAILABLE" and once.requests == [(0, True)]
    denied = Draining([([], grpc.StatusCode.PERMISSION_DENIED)])
    with TuneforgeClient(serve(denied)) as client, pytest.raises(TuneforgeError) as info:
        list(client.job_events("job-x"))
    assert info.value.code == "PERMISSION_DENIED" and len(denied.requests) == 1


def test_a_server_that_stays_away_ends_the_follow_after_the_reconnect_window(serve) -> None:
    gone = Draining([([1], grpc.StatusCode.UNAVAILABLE)] + [([], grpc.StatusCode.UNAVAILABLE)] * 50)
    with TuneforgeClient(serve(gone)) as client, pytest.raises(TuneforgeError) as info:
        list(client.job_events("job-x", reconnect_s=1.0))
    assert info.value.code == "UNAVAILABLE" and 2 <= len(gone.requests) < 10
