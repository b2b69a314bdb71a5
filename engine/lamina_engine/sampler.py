"""Sampler: logits -> next tokens, per-request temperature/top-k/top-p/min-p, seeds and logprobs.

Shapes: B rows (one per request that samples this step), V vocabulary entries.

Pipeline per row: greedy rows (temperature 0, or top_k=1) take the argmax of the raw logits.
Other rows divide by the temperature, mask by top-k, then top-p, then min-p, and draw with an
exponential race:
token = argmax(p_i / q_i) with q_i ~ Exp(1), which picks i with probability p_i. Every row draws
its q from the torch.Generator the caller passes for it (a seeded request's own, or the engine's
shared one), so its token depends only on its logits, its params and that generator's state,
never on which other requests share the batch or where the row sits.

Logprobs are "raw", as vLLM reports by default: log_softmax of the logits before temperature
and filtering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lamina_engine.sampling_params import SamplingParams


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded with `seed`, for one request's draws."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator


@dataclass
class SamplerOutput:
    """What one sampling step produced, row-aligned with the input logits.

    token_ids: [B] python ints, the chosen tokens.
    logprobs: [B] float32 tensor, log_softmax(raw logits)[row, token].
    top_logprobs: per row, None when the request asked for no logprobs, else {token_id: logprob}
        of its k most likely tokens under the raw logits, most likely first (empty when k == 0).
    """

    token_ids: list[int]
    logprobs: torch.Tensor
    top_logprobs: list[dict[int, float] | None]


class SamplingFailed(RuntimeError):
    """Sampling a batch raised. `failed`: row -> why, the rows that fail alone (every row when
    none does: the batch itself could not be sampled); `outputs`: row -> its SamplerOutput
    ([1]-row), the rows that sampled alone."""

    def __init__(self, failed: dict[int, str], outputs: dict[int, SamplerOutput]) -> None:
        super().__init__(
            f"sampling failed for row(s) {sorted(failed)}: {next(iter(failed.values()))}"
        )
        self.failed, self.outputs = failed, outputs


class Sampler:
    """Stateless: randomness lives in the generators the caller passes, one per row."""

    def sample_isolating(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
    ) -> SamplerOutput:
        """`sample`, and when the batch raises, each row alone, so the error belongs to the
        rows that cause it (SamplingFailed says which; the others' outputs come with it)."""
        try:
            return self.sample(logits, params, generators)
        except Exception as batch_exc:  # noqa: BLE001 - any error is some row's, or the batch's
            failed: dict[int, str] = {}
            outputs: dict[int, SamplerOutput] = {}
            for row in range(logits.shape[0]):
                try:
                    outputs[row] = self.sample(
                        logits[row : row + 1], [params[row]], [generators[row]]
                    )
                except Exception as exc:  # noqa: BLE001
                    failed[row] = f"sampling failed: {type(exc).__name__}: {exc}"
            if not failed:  # no row fails alone: the batch is at fault, not a request
                why = f"sampling failed: {type(batch_exc).__name__}: {batch_exc}"
                failed, outputs = dict.fromkeys(range(logits.shape[0]), why), {}
            raise SamplingFailed(failed, outputs) from batch_exc

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
    ) -> SamplerOutput:
        """Pick one token per row of `logits` [B, V] (float32)."""
        if logits.dim() != 2:
            raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
        batch = logits.shape[0]
        if len(params) != batch or len(generators) != batch:
            raise ValueError(
                f"got {batch} logit rows but {len(params)} SamplingParams and "
                f"{len(generators)} generators; pass one of each per row"
            )
        logits = logits.float()

        # top_k=1 keeps only the argmax: such rows are greedy whatever their temperature.
        greedy = [p.is_greedy or p.top_k == 1 for p in params]
        if all(greedy):
            token_ids = logits.argmax(dim=-1)  # one kernel for an all-greedy batch
        else:
            token_ids = torch.empty(batch, dtype=torch.long, device=logits.device)
            greedy_rows = [i for i, g in enumerate(greedy) if g]
            random_rows = [i for i, g in enumerate(greedy) if not g]
            if greedy_rows:
                rows = torch.tensor(greedy_rows, device=logits.device)
                token_ids[rows] = logits[rows].argmax(dim=-1)
            rows = torch.tensor(random_rows, device=logits.device)
            token_ids[rows] = self._sample_random(
                logits[rows],
                [params[i] for i in random_rows],
                [generators[i] for i in random_rows],
            )

        # log_softmax(x)[t] = x[t] - logsumexp(x): no [B, V] log-softmax is materialised.
        log_norm = torch.logsumexp(logits, dim=-1)  # [B]
        sampled_logprobs = logits.gather(1, token_ids[:, None]).squeeze(1) - log_norm
        return SamplerOutput(
            token_ids=token_ids.tolist(),
            logprobs=sampled_logprobs,
            top_logprobs=_top_logprobs(logits, log_norm, params),
        )

    def _sample_random(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """Temperature, top-k, top-p, min-p, then one draw per row. logits: [R, V] -> [R]."""
        device = logits.device
        temperature = torch.tensor([p.temperature for p in params], device=device)
        scaled = logits / temperature[:, None]

        filtered_rows = [i for i, p in enumerate(params) if p.needs_top_k_or_top_p]
        if filtered_rows:
            rows = torch.tensor(filtered_rows, device=device)
            scaled[rows] = _mask_top_k_top_p(
                scaled[rows],
                top_k=[params[i].top_k for i in filtered_rows],
                top_p=[params[i].top_p for i in filtered_rows],
            )
        probs = torch.softmax(scaled, dim=-1)  # [R, V], 0 where masked

        min_p_rows = [i for i, p in enumerate(params) if p.min_p > 0]
        if min_p_rows:
            rows = torch.tensor(min_p_rows, device=device)
            min_p = torch.tensor([params[i].min_p for i in min_p_rows], device=device)
            sub = probs[rows]
            threshold = sub.amax(dim=-1, keepdim=True) * min_p[:, None]
            sub = sub.masked_fill(sub < threshold, 0.0)
            # Renormalising is unnecessary for the race below: argmax(p / q) ignores scale.
            probs[rows] = sub

        return _exponential_race(probs, generators)


def _mask_top_k_top_p(x: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Set to -inf what top-k then top-p drop. x: [R, V] temperature-scaled logits.

    Rows with a top-k only need their k best candidates (a top-k, cheap); rows with top-p alone
    need the whole vocabulary sorted.
    """
    device = x.device
    vocab = x.shape[-1]
    # A top_k at or above the vocabulary keeps everything: it is "off" (and a k >= 2**63 would
    # overflow the int64 tensor below).
    top_k = [k if 0 < k < vocab else 0 for k in top_k]
    out = torch.empty_like(x)  # every row is written by exactly one of the two groups
    with_k = [i for i, k in enumerate(top_k) if k > 0]
    without_k = [i for i, k in enumerate(top_k) if k <= 0]
    for rows, candidates in ((with_k, max((top_k[i] for i in with_k), default=0)), (without_k, 0)):
        if not rows:
            continue
        index = torch.tensor(rows, device=device)
        sub = x[index]
        if candidates:
            values, order = sub.topk(candidates, dim=-1)  # [r, C] descending
        else:
            values, order = sub.sort(dim=-1, descending=True)  # [r, V]
        # C is the largest k among these rows; each row keeps its own first k, which do not
        # depend on C, so a row's result does not depend on its batch neighbours.
        width = values.shape[-1]
        keep_k = torch.tensor([top_k[i] if top_k[i] > 0 else width for i in rows], device=device)
        rank = torch.arange(width, device=device)
        values = values.masked_fill(rank[None, :] >= keep_k[:, None], float("-inf"))
        values = _mask_top_p(values, [top_p[i] for i in rows])
        out[index] = torch.full_like(sub, float("-inf")).scatter_(1, order, values)
    return out


def _mask_top_p(sorted_x: torch.Tensor, top_p: list[float]) -> torch.Tensor:
    """Top-p on logits sorted descending ([r, C]): token i stays while the probability mass
    strictly before it is below p, so the first token always stays. Rows with p == 1 use p = 2,
    so float rounding in the cumulative sum never trims their tail."""
    p = torch.tensor([pp if pp < 1.0 else 2.0 for pp in top_p], device=sorted_x.device)
    sorted_probs = torch.softmax(sorted_x, dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop = mass_before >= p[:, None]
    drop[:, 0] = False
    return sorted_x.masked_fill(drop, float("-inf"))


def _exponential_race(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Draw one token per row: argmax(p / q), q ~ Exp(1). probs: [R, V] -> [R] int64.

    q = -log(u) with u ~ U[0, 1): the same distribution as Tensor.exponential_, about 3x faster
    on CPU. u < 1 always, so q > 0 and p / q is never NaN (u == 0 gives q = inf, p / q = 0).
    """
    q = torch.empty_like(probs)
    for i, generator in enumerate(generators):
        if generator.device.type != probs.device.type:
            raise ValueError(
                f"a generator on {generator.device} cannot draw for logits on "
                f"{probs.device}; build it with make_generator(seed, device=logits.device)"
            )
        # Each row consumes exactly V draws of its generator per step (the engine relies on
        # it: a prefill pod's first draw is skipped on the decode pod by drawing V uniforms).
        q[i].uniform_(generator=generator)
    return (probs / q.log_().neg_()).argmax(dim=-1)


def _top_logprobs(
    logits: torch.Tensor, log_norm: torch.Tensor, params: Sequence[SamplingParams]
) -> list[dict[int, float] | None]:
    """Per row, {token: logprob} of the k most likely tokens; one top-k call for the batch."""
    wanted = [p.logprobs for p in params]
    k_max = max((k for k in wanted if k is not None), default=0)
    if k_max == 0:
        return [None if k is None else {} for k in wanted]
    values, indices = logits.topk(k_max, dim=-1)  # [B, k_max], sorted descending
    values_list = (values - log_norm[:, None]).tolist()
    indices_list = indices.tolist()
    return [
        None if k is None else dict(zip(indices_list[row][:k], values_list[row][:k], strict=True))
        for row, k in enumerate(wanted)
    ]
