#!/usr/bin/env python3
"""A logging proxy between one operator replica and the e2e apiserver, for the leader fencing
scenario: plain HTTP in, HTTPS (verified against the cluster CA) out, every request passed through
as it came (the bearer token included) and every answer streamed back (watches too).

Each request is logged as a JSON line: method, path, when it was received, when it was forwarded
and when the apiserver's answer arrived (Unix seconds), and the status. While the file given with
--hold-file exists, Lease writes (PUT/PATCH on .../leases/...) are held: forwarded only once the
file is removed. That is a leader whose renewals are delayed on the way, the others untouched.

    proxy.py --listen 127.0.0.1:18100 --upstream 127.0.0.1:6443 --ca ca.crt \
             --log requests.jsonl --hold-file hold
"""

import argparse
import http.client
import http.server
import json
import os
import ssl
import threading
import time

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te",
              "trailer", "upgrade", "proxy-connection"}


def read_body(handler):
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else None


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    args = None
    log_lock = threading.Lock()

    def log_message(self, *_):
        pass

    def record(self, entry):
        with self.log_lock, open(self.args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def held(self):
        return (self.command in ("PUT", "PATCH") and "/leases/" in self.path
                and os.path.exists(self.args.hold_file))

    def handle_any(self):
        received = time.time()
        body = read_body(self)
        while self.held():
            time.sleep(0.05)
        host, port = self.args.upstream.rsplit(":", 1)
        context = ssl.create_default_context(cafile=self.args.ca)
        upstream = http.client.HTTPSConnection(host, int(port), context=context, timeout=300)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        forwarded = time.time()
        entry = {"method": self.command, "path": self.path, "received": received,
                 "forwarded": forwarded}
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
        except OSError as e:
            entry.update(answered=time.time(), status=0, error=str(e))
            self.record(entry)
            self.send_error(502, str(e))
            return
        entry.update(answered=time.time(), status=answer.status)
        self.record(entry)
        try:
            self.send_response(answer.status, answer.reason)
            for k, v in answer.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                chunk = answer.read1(65536)
                if not chunk:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            upstream.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--hold-file", required=True)
    Proxy.args = parser.parse_args()
    host, port = Proxy.args.listen.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Proxy)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
