#!/usr/bin/env python3
"""A real gRPC client for the integration tests: grpcio with Envoy's generated stubs (xds-protos)
and gRPC's health stubs (grpcio-health-checking).

Usage: grpc_client.py HOST:PORT < calls.json

Reads a JSON list of calls from stdin, makes each on one channel in order, and prints one JSON
object per call on stdout:
  {"call": "check", "method": "GET", "path": "/x", "headers": {...}, "source": "192.0.2.1",
   "raw_headers": false, "context": {...context_extensions}}
      -> {"response": <CheckResponse as JSON>}
  {"call": "rls", "descriptors": [{"entries": [["k", "v"]], "hits": 2}], "hits": 1}
      -> {"response": <RateLimitResponse as JSON>}
  {"call": "health", "service": ""}
      -> {"response": <HealthCheckResponse as JSON>}
  {"call": "unknown"}  (a method tokengate does not serve)
Every call: {"error": "UNIMPLEMENTED", "details": "..."} when the call itself failed.
"""

import json
import sys

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(channel, call):
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method = call.get("method", "GET")
    http.path = call.get("path", "/")
    for name, value in call.get("headers", {}).items():
        if call.get("raw_headers"):
            h = http.header_map.headers.add()
            h.key = name
            h.raw_value = value.encode()
        else:
            http.headers[name] = value
    for name, value in call.get("context", {}).items():
        req.attributes.context_extensions[name] = value
    if "source" in call:
        req.attributes.source.address.socket_address.address = call["source"]
    return external_auth_pb2_grpc.AuthorizationStub(channel).Check(req, timeout=30)


def rls(channel, call):
    req = rls_pb2.RateLimitRequest(domain="tokengate", hits_addend=call.get("hits", 0))
    for d in call["descriptors"]:
        desc = ratelimit_pb2.RateLimitDescriptor(
            entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in d["entries"]])
        if "hits" in d:
            desc.hits_addend.value = d["hits"]
        req.descriptors.append(desc)
    return rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(req, timeout=30)


def health(channel, call):
    req = health_pb2.HealthCheckRequest(service=call.get("service", ""))
    return health_pb2_grpc.HealthStub(channel).Check(req, timeout=30)


def unknown(channel, _call):
    method = channel.unary_unary("/envoy.service.auth.v3.Authorization/Nope",
                                 request_serializer=lambda m: m, response_deserializer=lambda b: b)
    return method(b"", timeout=30)


CALLS = {"check": check, "rls": rls, "health": health, "unknown": unknown}


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) == 2 else 2
    calls = json.load(sys.stdin)
    with grpc.insecure_channel(sys.argv[1]) as channel:
        for call in calls:
            try:
                answer = CALLS[call["call"]](channel, call)
                if isinstance(answer, bytes):
                    out = {"response": answer.hex()}
                else:
                    out = {"response": json_format.MessageToDict(answer)}
            except grpc.RpcError as e:
                out = {"error": e.code().name, "details": e.details()}
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
