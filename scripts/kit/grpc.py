"""gRPC request bodies for h2load (`-d FILE`): Envoy's messages, built with Envoy's generated
Python types (xds-protos), behind the 5-byte gRPC prefix."""

import os
import struct

CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
RLS_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
HEALTH_PATH = "/grpc.health.v1.Health/Check"
# An empty HealthCheckRequest: the prefix alone.
HEALTH_BODY = b"\0\0\0\0\0"
HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def _framed(message):
    data = message.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


def check_body(key, method="GET", path="/api/orders/7", source="127.0.0.1"):
    """A CheckRequest as Envoy sends it for `method path` with `x-token: key`."""
    from envoy.service.auth.v3 import external_auth_pb2
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host, http.scheme = method, path, "api", "http"
    http.headers[":authority"] = "api"
    http.headers["x-token"] = key
    req.attributes.source.address.socket_address.address = source
    return _framed(req)


def rls_body(label, domain="tokengate"):
    """A RateLimitRequest with one descriptor naming the key labelled `label`."""
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2
    desc = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="tokengate_key", value=label)])
    return _framed(rls_pb2.RateLimitRequest(domain=domain, descriptors=[desc]))


def write(directory, name, body):
    """Writes `body` to directory/name; its path."""
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(body)
    return path
