"""Slot decoding: the optional backend capability continuous batching needs.

A static batch (ModelBackend.prefill / decode) holds sequences that started together at
one position. Continuous batching needs more: sequences of any prompt length join a
running decode batch between two steps and leave when done, each at its own position.
A backend that can do that returns a :class:`SlotDecoder` from
``ModelBackend.slot_decoder(n_slots, max_seq)``; one that cannot returns None (the
base default) and the engine batches it statically.

The decoder owns one KV cache of ``n_slots`` sequences. Sequences are named by the
caller's integer ids; which cache row holds which sequence is the decoder's business.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class SlotDecoder(ABC):
    """A batch of sequences that grows and shrinks between decode steps (greedy)."""

    n_slots: int  # sequences it can hold at once
    max_seq: int  # positions per sequence: prompt + generated tokens

    @abstractmethod
    def add(self, seq_ids: list[int], prompts: list[list[int]]) -> np.ndarray:
        """Prefill these prompts (any lengths, together) into free slots; returns the
        first generated token of each, [len(prompts)] int64 on the host. The sequences
        take part in every later step() until removed."""

    @abstractmethod
    def step(self) -> tuple[list[int], np.ndarray]:
        """One decode step for every sequence held: (their ids, the next token of each
        [n] int64 on the host, in that order)."""

    @abstractmethod
    def remove(self, seq_id: int) -> None:
        """The sequence leaves the batch; its slot is free for the next add()."""

    @abstractmethod
    def active(self) -> list[int]:
        """Ids of the sequences held, in the order step() returns them."""

    def clear(self) -> None:
        """Drop every sequence (after a failed step: the state is not trusted)."""
        for s in self.active():
            self.remove(s)
