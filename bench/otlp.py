"""An OTLP/gRPC trace receiver in this process, for the bench's traced runs. grpcio and
opentelemetry-proto, imported here, come with the bench extra (the worker's own OTLP exporter
brings them in through opentelemetry-exporter-otlp-proto-grpc; the service imports neither)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def span_sink():
    """An OTLP gRPC trace receiver on loopback that counts and drops spans: the worker's
    exporter does all its real work, the collector costs next to nothing."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        spans = 0

        def Export(self, request, context):  # noqa: N802 - the gRPC method name
            Sink.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", Sink
    finally:
        server.stop(grace=None)
