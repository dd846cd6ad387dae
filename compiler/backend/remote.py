"""Measuring on other machines: the servers registered with TVM's RPC tracker.

The standard TVM setup, on the tuning machine and each measuring one:

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY      # on each machine that measures

`tensorforge tune MODEL --rpc-tracker HOST:9190 --rpc-key KEY` then builds the candidates here and times them
there: the knob search (backend/tuning.py search_knobs) holds one session per server, each timing one kernel's
variants at a time (so n servers tune n kernels at once); `--search metaschedule` gives MetaSchedule's RPCRunner the
same tracker. The records land in the local database under the target compiled for, which must be the servers' CPU
(`--target` with its -mcpu; identical machines: the default, this one's).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile

from tensorforge.runtime.errors import CompileError

SESSION_TIMEOUT_S = 600  # one kernel's variants, timed in rounds, on a loaded machine


def parse_tracker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise CompileError(f"--rpc-tracker {text!r}: give HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


class RemoteServers:
    """The servers of `key` at the tracker `host:port`: `count` of them, those free now."""

    def __init__(self, tracker: str, key: str, session_timeout: float = SESSION_TIMEOUT_S):
        from tvm import rpc

        self.host, self.port = parse_tracker(tracker)
        self.key, self.timeout = key, session_timeout
        try:
            socket.create_connection((self.host, self.port), timeout=10).close()  # TVM's client retries for a minute
            summary = rpc.connect_tracker(self.host, self.port).summary()
        except Exception as e:  # noqa: BLE001 - TVM's connection errors, named
            raise CompileError(f"cannot reach the RPC tracker at {tracker} ({type(e).__name__}: {e}); start it with "
                               f"python -m tvm.exec.rpc_tracker --port {self.port}") from None
        self.count = int((summary.get("queue_info", {}).get(key) or {}).get("free", 0))
        if self.count < 1:
            keys = sorted(summary.get("queue_info", {}))
            raise CompileError(f"the RPC tracker at {tracker} has no free server of key {key!r} (keys: {keys}); "
                               f"start one with python -m tvm.exec.rpc_server --tracker {tracker} --key {key}")

    def rpc_config(self):
        from tvm.s_tir import meta_schedule as ms

        return ms.runner.RPCConfig(tracker_host=self.host, tracker_port=self.port, tracker_key=self.key,
                                   session_timeout_sec=int(self.timeout))

    @contextlib.contextmanager
    def session(self, i: int):
        """A `_RemoteMeasure` on one server (the i-th session asked for)."""
        from tvm import rpc

        try:
            sess = rpc.connect_tracker(self.host, self.port).request(self.key, priority=1,
                                                                     session_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001
            raise CompileError(f"no session from the RPC tracker {self.host}:{self.port} for key {self.key!r} "
                               f"({type(e).__name__}: {e})") from None
        with tempfile.TemporaryDirectory(prefix="tensorforge-rpc-") as work:
            yield _RemoteMeasure(sess, work, i)


class _RemoteMeasure:
    """Times variants on a remote server: the library uploaded, its functions timed there."""

    def __init__(self, sess, work: str, i: int):
        self.sess, self.work, self.i, self.n = sess, work, i, 0

    def time(self, ex, syms, func, rounds: int) -> dict:
        from .tuning import _time_variants

        self.n += 1
        name = f"variants{self.i}_{self.n}.so"
        path = os.path.join(self.work, name)
        ex.export_library(path)
        self.sess.upload(path)
        mod = self.sess.load_module(name)
        return _time_variants(mod, self.sess.cpu(), syms, func, rounds)
