"""The image's entrypoint (`python3 -m server`): picks the serving mode from BUILDER_SERVE_MODE.

http (default): uvicorn serving create_app on $PORT, for pods and RunPod load-balancing
endpoints; when PORT_HEALTH names another port, the same server listens there too and answers
only /ping. queue: the runpod SDK's worker loop (server/queue_worker.py). A setting the server
cannot use prints one line and exits 2.
"""

from __future__ import annotations

import socket
import sys

from server.settings import Settings, SettingsError


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve_http(settings: Settings) -> int:
    import uvicorn

    from server.app import create_app

    ports = [settings.port]
    if settings.port_health is not None and settings.port_health != settings.port:
        ports.append(settings.port_health)
    try:
        # Bound here, not by uvicorn: uvicorn binds one host:port, and one server (one app, one
        # model in memory) must answer on both.
        sockets = [_listen(settings.host, port) for port in ports]
    except OSError as exc:
        print(f"cannot listen on {settings.host} port {', '.join(map(str, ports))}: {exc}", file=sys.stderr)
        return 1
    config = uvicorn.Config(create_app(settings), log_level="info", timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    health = f" (and /ping on port {ports[1]})" if len(ports) > 1 else ""
    print(f"serving on http://{settings.host}:{ports[0]}{health}", file=sys.stderr, flush=True)
    server.run(sockets=sockets)
    return 0


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"server: {exc}", file=sys.stderr)
        return 2
    if settings.serve_mode == "queue":
        from server.queue_worker import serve_queue

        return serve_queue(settings)
    return serve_http(settings)


if __name__ == "__main__":
    sys.exit(main())
