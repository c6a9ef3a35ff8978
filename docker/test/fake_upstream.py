#!/usr/bin/env python3
"""A stand-in replica for testing the gateway's retry rules deterministically.

    fake_upstream.py --port PORT --name A --mode ok|drop [--delay-attention S]

mode ok:   answers every request 200 with {"replica": NAME, "path": ...}, or with the status
           named by an `x-fake-status` request header (the body then has the service's error
           shape), after --delay-attention seconds for /explain/attention.
mode drop: reads the whole request, then closes the connection without answering (what a
           replica killed mid-request looks like to the gateway).

GET /__hits (straight to the fake, not through the gateway) returns how many requests each
path received, so a test can tell whether the gateway sent a request once or twice.
Listens on 127.0.0.1 only; stops on SIGTERM.
"""

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--mode", choices=["ok", "drop"], default="ok")
    ap.add_argument("--delay-attention", type=float, default=0.0)
    args = ap.parse_args()
    hits = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            if self.path == "/__hits":
                with lock:
                    self._answer(200, dict(hits))
                return
            with lock:
                hits[self.path] = hits.get(self.path, 0) + 1
            if args.mode == "drop":
                self.close_connection = True
                return
            if self.path.startswith("/explain/attention") and args.delay_attention:
                time.sleep(args.delay_attention)
            status = int(self.headers.get("x-fake-status") or 200)
            if status == 200:
                self._answer(200, {"replica": args.name, "path": self.path})
            else:
                self._answer(status, {"error": {"code": f"fake_{status}", "message": f"from replica {args.name}"}})

        do_GET = _handle
        do_POST = _handle

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"fake upstream {args.name} ({args.mode}) on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
