#!/usr/bin/python3
"""An RFC 1961 SOCKS5 GSS-API client (python-gssapi over MIT krb5), for the tests: Debian's
curl 7.88 cannot do SOCKS5 GSS-API (its state machine forgets that GSS-API was allowed when the
method reply does not arrive in the same read; see the issue note).

usage: socks5-gssapi-client.py PROXY_HOST PROXY_PORT SERVICE@HOST DEST_HOST DEST_PORT [nec]
Connects through the proxy, sends `GET / HTTP/1.0` and prints the response body; exit 0 on a
SOCKS success, 2 on an authentication failure (server abort), 3 on a SOCKS refusal."""
import socket
import struct
import sys

import gssapi

proxy_host, proxy_port, service, dest, dport = sys.argv[1:6]
nec = len(sys.argv) > 6 and sys.argv[6] == "nec"
s = socket.create_connection((proxy_host, int(proxy_port)), timeout=10)


def recv_exact(n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            sys.exit(2)
        out += chunk
    return out


s.sendall(b"\x05\x01\x01")
ver, method = recv_exact(2)
if method != 1:
    print(f"method {method}", file=sys.stderr)
    sys.exit(3)
name = gssapi.Name(service, gssapi.NameType.hostbased_service)
ctx = gssapi.SecurityContext(name=name, usage="initiate", mech=gssapi.MechType.kerberos,
                             flags=gssapi.RequirementFlag.mutual_authentication
                             | gssapi.RequirementFlag.integrity)
token = ctx.step()
while True:
    s.sendall(struct.pack("!BBH", 1, 1, len(token)) + token)
    if ctx.complete:
        break
    head = recv_exact(2)
    if head[1] == 0xFF:
        print("aborted by the server", file=sys.stderr)
        sys.exit(2)
    (length,) = struct.unpack("!H", recv_exact(2))
    token = ctx.step(recv_exact(length))
    if ctx.complete:
        break
level = b"\x00"
msg = level if nec else ctx.wrap(level, False).message
s.sendall(struct.pack("!BBH", 1, 2, len(msg)) + msg)
head = recv_exact(2)
if head[1] == 0xFF:
    print("protection level refused", file=sys.stderr)
    sys.exit(2)
(length,) = struct.unpack("!H", recv_exact(2))
answer = recv_exact(length)
granted = answer if nec else ctx.unwrap(answer).message
if granted != b"\x00":
    print(f"granted level {granted!r}", file=sys.stderr)
    sys.exit(3)
host = dest.encode()
s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack("!H", int(dport)))
reply = recv_exact(4)
if reply[1] != 0:
    print(f"SOCKS reply {reply[1]}", file=sys.stderr)
    sys.exit(3)
atyp = reply[3]
recv_exact({1: 4 + 2, 4: 16 + 2}.get(atyp, 0) or (recv_exact(1)[0] + 2))
s.sendall(f"GET / HTTP/1.0\r\nHost: {dest}\r\n\r\n".encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace"))
