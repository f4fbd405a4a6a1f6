#!/usr/bin/env python3
"""Peers for bench/reload.sh, standard library only.

serve PORT_A PORT_B PORT_WS
    Two HTTP/1.1 keep-alive upstreams answering 200 "a" and "b", and a
    WebSocket echo server. Runs until killed.

clients URL COUNT SECONDS
    Opens COUNT WebSockets to ws://URL, sends a text message on each every
    50 ms for SECONDS and checks every echo. Prints one line:
    "opened N dropped K messages M mismatched X".
"""

import asyncio
import base64
import hashlib
import os
import struct
import sys

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


def http_server(body):
    payload = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )

    async def handle(reader, writer):
        try:
            while True:
                _, headers = await read_head(reader)
                n = int(headers.get("content-length", "0"))
                if n:
                    await reader.readexactly(n)
                writer.write(payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return handle


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    if mask:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return b0 & 0x0F, data


def frame(opcode, data, masked):
    head = bytes([0x80 | opcode])
    n = len(data)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if masked:
        mask = os.urandom(4)
        return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return head + data


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


async def ws_echo(reader, writer):
    try:
        _, headers = await read_head(reader)
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                f"sec-websocket-accept: {accept_key(headers['sec-websocket-key'])}\r\n\r\n"
            ).encode()
        )
        while True:
            opcode, data = await read_frame(reader)
            if opcode == 8:
                writer.write(frame(8, data, False))
                break
            if opcode in (1, 2):
                writer.write(frame(opcode, data, False))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, KeyError):
        pass
    finally:
        writer.close()


async def serve(port_a, port_b, port_ws):
    servers = [
        await asyncio.start_server(http_server(b"a"), "127.0.0.1", port_a, backlog=1024),
        await asyncio.start_server(http_server(b"b"), "127.0.0.1", port_b, backlog=1024),
        await asyncio.start_server(ws_echo, "127.0.0.1", port_ws, backlog=1024),
    ]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def one_client(i, host, port, path, seconds, stats):
    try:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                f"sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
            ).encode()
        )
        status, headers = await asyncio.wait_for(read_head(reader), 5)
        if " 101 " not in status or headers.get("sec-websocket-accept") != accept_key(key):
            raise ConnectionError(f"handshake failed: {status}")
    except Exception as e:  # noqa: BLE001 - any failure to open counts
        print(f"socket {i} did not open: {e}", file=sys.stderr)
        return
    stats["opened"] += 1
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    n = 0
    try:
        while loop.time() < end:
            text = f"socket {i} message {n}".encode()
            writer.write(frame(1, text, True))
            await writer.drain()
            opcode, data = await asyncio.wait_for(read_frame(reader), 5)
            if opcode != 1 or data != text:
                stats["mismatched"] += 1
            stats["messages"] += 1
            n += 1
            await asyncio.sleep(0.05)
        writer.write(frame(8, b"", True))
        await writer.drain()
    except Exception as e:  # noqa: BLE001 - any failure mid-stream is a drop
        print(f"socket {i} dropped after {n} messages: {e!r}", file=sys.stderr)
        stats["dropped"] += 1
    finally:
        writer.close()


async def clients(url, count, seconds):
    hostport, _, path = url.partition("/")
    host, port = hostport.rsplit(":", 1)
    stats = {"opened": 0, "dropped": 0, "messages": 0, "mismatched": 0}
    await asyncio.gather(*(one_client(i, host, int(port), "/" + path, seconds, stats) for i in range(count)))
    print(
        f"opened {stats['opened']} dropped {stats['dropped']} "
        f"messages {stats['messages']} mismatched {stats['mismatched']}",
        flush=True,
    )


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        asyncio.run(serve(*map(int, sys.argv[2:5])))
    elif len(sys.argv) == 5 and sys.argv[1] == "clients":
        asyncio.run(clients(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
