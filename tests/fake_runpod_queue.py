"""A stand-in for RunPod's job queue (a true boundary): the HTTP endpoints runpod's worker loop
polls and posts to, recording what the platform would receive."""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class FakeJobQueue:
    def __init__(self, jobs: list[dict]):
        self.pending = deque(jobs)
        self.done: dict[str, dict] = {}  # job id -> body posted to job-done
        self.done_posts: dict[str, int] = {}  # job id -> how many times job-done was posted for it
        self.streamed: dict[str, list] = {}  # job id -> outputs posted to job-stream, in order
        self.finished = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address
        return f"http://{host}:{port}"

    def worker_env(self) -> dict[str, str]:
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/job-take/$ID",
            # runpod appends "&isStream=..." to these, so like the platform's they carry a query already.
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=none",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{self.url}/job-stream/$RUNPOD_POD_ID/$ID?gpu=none",
            "RUNPOD_POD_ID": "test",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }

    def __enter__(self) -> "FakeJobQueue":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.finished:
            return self.finished.wait_for(lambda: len(self.done) >= count, timeout)

    def _handler_class(self):
        queue = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = urlparse(self.path).path
                if path.startswith("/job-take-batch/"):  # a worker taking several jobs at once
                    size = int(re.search(r"batch_size=(\d+)", self.path).group(1))
                    jobs = [queue.pending.popleft() for _ in range(min(size, len(queue.pending)))]
                    return self._reply(200, jobs) if jobs else self._reply(204)
                if not path.startswith("/job-take/"):
                    return self._reply(404)
                job = queue.pending.popleft() if queue.pending else None
                return self._reply(200, job) if job else self._reply(204)

            def do_POST(self):
                parts = urlparse(self.path).path.strip("/").split("/")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                kind, job_id = parts[0], parts[-1]
                if kind == "job-stream":
                    queue.streamed.setdefault(job_id, []).append(body["output"])
                elif kind == "job-done":
                    with queue.finished:
                        queue.done[job_id] = body
                        queue.done_posts[job_id] = queue.done_posts.get(job_id, 0) + 1
                        queue.finished.notify_all()
                self._reply(200, {})

        return Handler
