"""A backend that fails on demand, for accel-harness's resilience tests.

It runs the reference model with accel-harness's torch backend on cpu and, where its
options say so, really fails inside the worker process: a segfault, a hang, an
allocation past a memory limit, a SIGKILL (what the out-of-memory killer sends), an
exception or a silent exit. The harness must turn each into a failed cell with its
reason and go on with the rest of the suite.

fault: wrong-tokens is a cheat rather than a crash: decode() returns token 0 at once,
without running the model, while prefill() and logits() stay honest. The accuracy gate
must find it out from the timed output and make the cell invalid.

fault: slow-in-energy-window is a device that slows down after a while (thermal
throttling, a neighbour's load arriving): the first ``slow_after_decodes`` decode calls
run at full speed, every later one first sleeps ``slow_decode_s``. With
slow_after_decodes = warmup + repetitions, the timed repetitions run fast and the
offline scenario's energy windows (which come after them) run slow. The backend sees
nothing of the harness -- no hook tells it a meter window is open -- so what the test
shows is that the harness catches a real slowdown by comparing speeds, not that it
trusts a signal of its own.

    backends:
      - type: faulty
        options: {fault: segfault, fault_at: prefill, fault_on_batch: 2}
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import signal
import sys
import time
from typing import Any, Literal

import numpy as np

from backends.base import DecodeResult, LoadInfo, ModelBackend
from backends.torch_backend import TorchBackend, TorchOptions

__all__ = ["FaultyBackend", "FaultyOptions"]


@dataclass
class FaultyOptions:
    fault: Literal["none", "segfault", "hang", "oom", "kill", "raise", "exit", "wrong-tokens",
                   "slow-in-energy-window"] = "none"
    fault_at: Literal["load", "prepare", "prefill", "decode"] = "prefill"
    fault_on_batch: int | None = None  # only the cell with this batch size faults (not for load)
    message: str = "injected fault"  # the exception text of fault: raise
    exit_code: int = 3  # fault: exit
    memory_headroom_mb: int = 512  # fault: oom -- address space allowed beyond what load() left mapped
    oom_alloc_mb: int = 8192  # fault: oom -- what the faulting call then tries to allocate
    threads: int | None = 1  # torch intra-op threads
    sleep_s: float = 0.0  # each prefill first sleeps this long: a slow device, for tests that interrupt a run
    slow_after_decodes: int = 0  # fault: slow-in-energy-window -- decode calls at full speed before the slowdown
    slow_decode_s: float = 0.2  # fault: slow-in-energy-window -- each later decode call first sleeps this long


class FaultyBackend(ModelBackend):
    name = "faulty"
    Options = FaultyOptions
    dtypes = ("fp32", "bf16")

    def __init__(self, options: FaultyOptions):
        super().__init__(options)
        self.inner = TorchBackend(TorchOptions(device="cpu", threads=options.threads))
        self._batch: int | None = None
        self._limited = False
        self._decodes = 0  # decode calls so far (fault: slow-in-energy-window)

    @classmethod
    def device_of(cls, options: Any) -> str:
        return "cpu"

    # --- the faults ----------------------------------------------------------------

    def _maybe_fault(self, where: str) -> None:
        o = self.options
        if o.fault in ("none", "wrong-tokens", "slow-in-energy-window") or o.fault_at != where:  # see decode()
            return
        if where != "load" and o.fault_on_batch is not None and self._batch != o.fault_on_batch:
            return
        print(f"faulty backend: injecting {o.fault} at {where} (batch {self._batch})", file=sys.stderr, flush=True)
        if o.fault == "segfault":
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core file
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(10)  # the signal is delivered before this returns
        elif o.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)
        elif o.fault == "hang":
            while True:
                time.sleep(3600)
        elif o.fault == "oom":
            self._allocate_past_limit()
        elif o.fault == "raise":
            raise RuntimeError(o.message)
        elif o.fault == "exit":
            os._exit(o.exit_code)

    def _limit_address_space(self) -> None:
        """RLIMIT_AS = what this process maps now + memory_headroom_mb, for fault: oom."""
        import resource

        try:
            status = Path("/proc/self/status").read_text()
            vm_kb = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmSize:"))
        except (OSError, StopIteration, ValueError):
            return  # no /proc (not Linux): _allocate_past_limit raises MemoryError itself
        soft = (vm_kb << 10) + (self.options.memory_headroom_mb << 20)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        self._limited = True

    def _allocate_past_limit(self) -> None:
        import torch

        if not self._limited:
            raise MemoryError(f"cannot allocate {self.options.oom_alloc_mb} MiB (no address-space limit here)")
        block = torch.empty(self.options.oom_alloc_mb << 20, dtype=torch.uint8)
        block.fill_(1)  # not reached under the limit; without it, touch every page
        raise RuntimeError(f"allocated {self.options.oom_alloc_mb} MiB past the limit: RLIMIT_AS not enforced")

    # --- the ModelBackend protocol: torch on cpu -------------------------------------

    def describe(self) -> dict[str, Any]:
        return dict(self.inner.describe(), backend=self.name, fault=self.options.fault)

    def load(self, spec, dtype: str, max_batch: int, max_seq: int) -> LoadInfo:
        info = self.inner.load(spec, dtype, max_batch, max_seq)
        if self.options.fault == "oom":
            self._limit_address_space()
        self._maybe_fault("load")
        return info

    def prepare(self, batch: int, seq_len: int) -> float:
        self._batch = batch
        self._maybe_fault("prepare")
        return self.inner.prepare(batch, seq_len)

    def prefill(self, token_ids):
        self._batch = token_ids.shape[0]
        self._maybe_fault("prefill")
        if self.options.sleep_s:
            time.sleep(self.options.sleep_s)
        return self.inner.prefill(token_ids)

    def first_tokens(self, state):
        return self.inner.first_tokens(state)

    def decode(self, state, n: int) -> DecodeResult:
        """The torch backend's decode, which advances the state (fault: wrong-tokens:
        zeros, instantly, on every batch or the one fault_on_batch names)."""
        o = self.options
        if o.fault == "wrong-tokens" and o.fault_on_batch in (None, self._batch):
            return DecodeResult(np.zeros((len(self.inner.first_tokens(state)), n), dtype=np.int64), None)
        if o.fault == "slow-in-energy-window" and o.fault_on_batch in (None, self._batch):
            self._decodes += 1
            if self._decodes > o.slow_after_decodes:
                time.sleep(o.slow_decode_s)  # a throttled device: same tokens, later
        self._maybe_fault("decode")
        return self.inner.decode(state, n)

    def synchronize(self) -> None:
        self.inner.synchronize()

    def meters(self) -> list[dict[str, Any]]:
        return self.inner.meters()

    def logits(self, token_ids, n_prefill: int):
        return self.inner.logits(token_ids, n_prefill)

    def close(self) -> None:
        self.inner.close()
