"""A bounded load through the OpenAI client, counting what each request went through.

Every request is greedy, so its right answer is known in advance. A request is retried (up to
`attempts` times, 2 s apart: a replacement pod may take a minute to load its model) only on what
a client may retry: a connection error, a timeout, or HTTP 408/429/500/502/503/504. Anything
else, or a wrong text, is a failure.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import openai

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass
class LoadResult:
    requests: int = 0
    ok_first_try: int = 0
    ok_after_retry: int = 0
    failed: list[str] = field(default_factory=list)
    retry_reasons: Counter = field(default_factory=Counter)
    retry_examples: list[str] = field(default_factory=list)  # the first few, with the message
    seconds: float = 0.0

    @property
    def completed(self) -> int:
        return self.ok_first_try + self.ok_after_retry


def _one(client: openai.OpenAI, model: str, prompt: str, expected: str, max_tokens: int,
         attempts: int, result: LoadResult, lock: threading.Lock) -> None:  # fmt: skip
    for attempt in range(attempts):
        try:
            out = client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0
            )
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            reason = type(err).__name__
        except openai.APIStatusError as err:
            if err.status_code not in RETRYABLE_STATUS:
                with lock:
                    result.failed.append(f"HTTP {err.status_code}: {err.message}")
                return
            reason = f"HTTP {err.status_code}"
            with lock:
                if len(result.retry_examples) < 5:
                    result.retry_examples.append(f"{reason}: {err.message}"[:300])
        else:
            text = out.choices[0].text
            with lock:
                if text != expected:
                    result.failed.append(f"wrong text {text!r} (expected {expected!r})")
                elif attempt == 0:
                    result.ok_first_try += 1
                else:
                    result.ok_after_retry += 1
            return
        with lock:
            result.retry_reasons[reason] += 1
        time.sleep(2.0)
    with lock:
        result.failed.append(f"gave up after {attempts} attempts")


def run_load(base_url: str, model: str, prompt: str, expected: str, *, requests: int,
             concurrency: int, max_tokens: int, attempts: int = 90,
             during=None) -> LoadResult:  # fmt: skip
    """At least `requests` completions with `concurrency` in flight; `during(progress)` runs
    beside them (progress() -> requests finished so far), e.g. to delete pods mid-load, and the
    load goes on until it returns, so a disruption that outlasts the requests (a roll) is under
    load all along: result.requests is how many were sent."""
    # The client's own retries are off: this loop counts every retry itself.
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120.0)
    result = LoadResult()
    lock = threading.Lock()
    t0 = time.monotonic()
    side_error: list[BaseException] = []

    def side(progress) -> None:
        try:
            during(progress)
        except BaseException as err:  # re-raised below, in the caller's thread
            side_error.append(err)

    thread = None
    if during is not None:
        progress = lambda: result.completed + len(result.failed)  # noqa: E731
        thread = threading.Thread(target=side, args=(progress,), daemon=True)

    def next_request() -> bool:
        with lock:
            going = thread is not None and thread.is_alive() and not side_error
            if result.requests < requests or going:
                result.requests += 1
                return True
            return False

    def worker() -> None:
        while next_request():
            _one(client, model, prompt, expected, max_tokens, attempts, result, lock)

    if thread is not None:
        thread.start()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    if thread is not None:
        thread.join()
    if side_error:
        raise side_error[0]
    result.seconds = time.monotonic() - t0
    return result
