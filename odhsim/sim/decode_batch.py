"""The running (decoding) batch of an LLM replica, kept so that a span of k decode steps costs O(1) in its size.

- `steps` counts decode steps the batch has done. A request that joined at step s with context c keeps
  `offset = c - s` fixed, so its context at any time is offset + steps and the batch's total context is
  sum(offset) + size * steps.
- A heap orders the requests by the step at which they produce their last token.
- KV blocks, as vLLM V1 allocates them: a decoding request of context c (prompt + generated tokens) has computed
  c - 1 of them and holds ceil((c - 1) / block_size) blocks; its next step computes the newest token, so k more
  steps hold ceil((c - 1 + k) / block_size). That depends only on (c - 1) mod block_size, so a histogram of
  `(offset - 1) mod block_size` suffices.
"""

from __future__ import annotations

import heapq

from odhsim.sim.request import SimRequest


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class DecodeBatch:
    def __init__(self, block_size: int) -> None:
        self.bs = block_size
        self.requests: dict[int, SimRequest] = {}  # row -> request, in admission order
        self.steps = 0
        self._heap: list[tuple[int, int, int, SimRequest]] = []  # (finish step, row, epoch, request)
        self._phase_counts = [0] * block_size
        self._offset_sum = 0

    def __len__(self) -> int:
        return len(self.requests)

    def context_tokens(self) -> int:
        """Total context over the batch now (what a decode step reads from the KV cache)."""
        return self._offset_sum + len(self.requests) * self.steps

    def join(self, req: SimRequest) -> None:
        """Add a request whose prompt is computed (req.ctx, req.generated up to date)."""
        offset = req.ctx - self.steps
        req.join_step = self.steps
        req.finish_step = self.steps + (req.output_tokens - req.generated)
        req.running_epoch += 1
        self.requests[req.row] = req
        self._phase_counts[(offset - 1) % self.bs] += 1
        self._offset_sum += offset
        heapq.heappush(self._heap, (req.finish_step, req.row, req.running_epoch, req))

    def leave(self, req: SimRequest) -> None:
        """Remove a request, bringing its token counts up to date (its heap entry goes stale)."""
        del self.requests[req.row]
        req.running_epoch += 1
        advanced = self.steps - req.join_step
        offset = req.ctx - req.join_step
        self._phase_counts[(offset - 1) % self.bs] -= 1
        self._offset_sum -= offset
        req.generated += advanced
        req.ctx += advanced

    def last_admitted(self) -> SimRequest:
        return self.requests[next(reversed(self.requests))]

    def only(self) -> SimRequest:
        return self.requests[next(iter(self.requests))]

    def steps_to_next_finish(self) -> int:
        """Decode steps until the first request of a non-empty batch produces its last token."""
        heap = self._heap
        while heap[0][3].running_epoch != heap[0][2] or heap[0][1] not in self.requests:
            heapq.heappop(heap)
        return heap[0][0] - self.steps

    def new_blocks(self, k: int) -> int:
        """New KV blocks the batch needs for its next k decode steps (vLLM allocates each at the step's start).

        Over k = q * bs + rem steps every request starts q new blocks, plus one more if its computed tokens
        mod bs lie in the cyclic window of rem values that reach a block boundary first: a slice of the
        histogram, so O(rem) in C whatever the batch size."""
        if k == 1:  # the common case (every chunked-prefill step): requests whose next token starts a block
            return self._phase_counts[-self.steps % self.bs]
        if k <= 0:
            return 0
        bs = self.bs
        q, rem = divmod(k, bs)
        total = q * len(self.requests)
        if rem:
            counts = self._phase_counts
            start = (bs - rem + 1 - self.steps) % bs
            end = start + rem
            total += sum(counts[start:end]) if end <= bs else sum(counts[start:]) + sum(counts[: end - bs])
        return total

    def step_limit(self, k: int, free_blocks: int) -> int:
        """The largest k' <= k whose decode steps fit in `free_blocks` new KV blocks."""
        if len(self.requests) * ceil_div(k, self.bs) <= free_blocks:
            return k
        lo, hi = 0, k
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.new_blocks(mid) <= free_blocks:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def advance(self, k: int) -> list[SimRequest]:
        """k decode steps done: the requests that produced their last token leave and are returned."""
        self.steps += k
        done: list[SimRequest] = []
        heap = self._heap
        while heap and heap[0][0] <= self.steps:
            _, row, epoch, req = heapq.heappop(heap)
            if req.running_epoch != epoch or row not in self.requests:
                continue
            self.leave(req)
            done.append(req)
        return done
