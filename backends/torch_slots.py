"""Continuous batching for the torch backend: a SlotDecoder over the reference model.

The n sequences held occupy cache rows 0..n-1 of one [n_slots, kv, max_seq, hd] cache
per layer, each with its own position. A step runs rows 0..n-1 only (a view, no copy),
so the work of a step is that of n sequences, not of n_slots. When a sequence leaves,
the last row moves into its place (only the positions it has filled), keeping the
rows dense. New prompts, of any lengths, are prefilled together, right-padded, into
rows n..n+g-1 (workloads/models/llama.py, Transformer.forward_rows).

On CUDA (cuda_graphs on) each step for n rows is one CUDA graph, captured per n when
the decoder is made, over static token and position buffers: one graph replay and one
copy of n token ids to the host per step.
"""
from __future__ import annotations

import numpy as np
import torch

from backends.base import BackendError
from backends.slots import SlotDecoder
from workloads.models.llama import Transformer, decode_rows, prefill_rows


class TorchSlotDecoder(SlotDecoder):
    def __init__(self, model: Transformer, caches: list, n_slots: int, max_seq: int, device: torch.device,
                 cuda_graphs: bool):
        self.model, self.caches, self.device = model, caches, device
        self.n_slots, self.max_seq = n_slots, max_seq
        self._ids: list[int] = []  # the sequence in each row, rows 0..n-1
        self._len: list[int] = []  # positions each row has filled (host copy of pos)
        self.tok = torch.zeros(n_slots, 1, dtype=torch.long, device=device)  # the token each row feeds next
        self.pos = torch.zeros(n_slots, dtype=torch.long, device=device)  # ... and its position
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if cuda_graphs and device.type == "cuda":
            with torch.inference_mode():
                self._capture_all()

    # the step, eager or captured ------------------------------------------------------------
    def _body(self, n: int) -> None:
        nxt = decode_rows(self.model, self.tok[:n], self.pos[:n], slice(0, n)).argmax(-1, keepdim=True)
        self.tok[:n].copy_(nxt)
        self.pos[:n].add_(1)

    def _capture_all(self) -> None:
        self.model.set_caches(self.caches)
        pool = torch.cuda.graph_pool_handle()  # one memory pool for the n_slots graphs
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture, as CUDA graphs require
            for n in range(1, self.n_slots + 1):
                for _ in range(2):
                    self.pos.zero_()
                    self._body(n)
        torch.cuda.current_stream().wait_stream(side)
        for n in range(1, self.n_slots + 1):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self._body(n)
            self._graphs[n] = g
        # warm-ups wrote rows at positions 0..1; nothing is held yet, and a prefill
        # writes every position a later step can read
        self.pos.zero_()
        self.tok.zero_()
        torch.cuda.synchronize(self.device)

    # SlotDecoder ------------------------------------------------------------------------------
    def active(self) -> list[int]:
        return list(self._ids)

    @torch.inference_mode()
    def add(self, seq_ids: list[int], prompts: list[list[int]]) -> np.ndarray:
        n, g = len(self._ids), len(prompts)
        if n + g > self.n_slots:
            raise BackendError(f"{n + g} sequences asked for; the slot cache holds {self.n_slots}")
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1 or max(lengths) >= self.max_seq:
            raise BackendError(f"prompt lengths {lengths} outside [1, {self.max_seq - 1}]")
        padded = np.zeros((g, max(lengths)), dtype=np.int64)
        for i, p in enumerate(prompts):
            padded[i, : len(p)] = p
        tokens = torch.from_numpy(padded).to(self.device)
        lens = torch.tensor(lengths, dtype=torch.long, device=self.device)
        self.model.set_caches(self.caches)
        first = prefill_rows(self.model, tokens, lens, slice(n, n + g)).argmax(-1)
        self.tok[n : n + g, 0] = first
        self.pos[n : n + g] = lens
        self._ids += list(seq_ids)
        self._len += lengths
        return first.cpu().numpy()

    @torch.inference_mode()
    def step(self) -> tuple[list[int], np.ndarray]:
        n = len(self._ids)
        if n == 0:
            return [], np.zeros(0, dtype=np.int64)
        if max(self._len) >= self.max_seq:
            raise BackendError(f"decode to position {max(self._len)} exceeds the cache ({self.max_seq})")
        self.model.set_caches(self.caches)
        graph = self._graphs.get(n)
        if graph is not None:
            graph.replay()
        else:
            self._body(n)
        self._len = [x + 1 for x in self._len]
        return list(self._ids), self.tok[:n, 0].cpu().numpy()

    @torch.inference_mode()
    def remove(self, seq_id: int) -> None:
        r = self._ids.index(seq_id)
        last = len(self._ids) - 1
        if r != last:
            self.model.set_caches(self.caches)
            self.model.move_row(last, r, self._len[last])
            self.tok[r] = self.tok[last]
            self.pos[r] = self.pos[last]
            self._ids[r], self._len[r] = self._ids[last], self._len[last]
        self._ids.pop()
        self._len.pop()
