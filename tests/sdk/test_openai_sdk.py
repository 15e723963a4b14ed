"""The official openai Python SDK as a real client of `sluice serve`.

Run by crates/sluice/tests/sdk.rs, which starts the mock upstream and sluice
and passes their addresses and keys in the environment. Each test prints
what it checked; any failure exits non-zero.
"""

import os
import sys
import time

import openai

# The SDK's own HTTP library: httpx2 in openai >= 3, httpx before.
try:
    import httpx2 as httpx
except ImportError:
    import httpx

BASE = os.environ["SLUICE_URL"] + "/v1"
DAY_KEY = os.environ["SLUICE_DAY_KEY"]
SHORT_KEY = os.environ["SLUICE_SHORT_KEY"]
STREAM_KEY = os.environ["SLUICE_STREAM_KEY"]
ABORT_KEY = os.environ["SLUICE_ABORT_KEY"]
BUDGET_KEY = os.environ["SLUICE_BUDGET_KEY"]
WAIT_KEY = os.environ["SLUICE_WAIT_KEY"]
HARD_KEY = os.environ["SLUICE_HARD_KEY"]
MESSAGES = [{"role": "user", "content": "Say something."}]


def client(key, sent):
    """A client that records every HTTP request it sends (retries included)."""
    http = httpx.Client(event_hooks={"request": [sent.append]})
    return openai.OpenAI(base_url=BASE, api_key=key, http_client=http, max_retries=2)


def test_day_limit_raises_rate_limit_error_without_retrying():
    sent = []
    c = client(DAY_KEY, sent)
    c.chat.completions.create(model="day-model", messages=MESSAGES, max_tokens=5)
    started = time.monotonic()
    try:
        c.chat.completions.create(model="day-model", messages=MESSAGES, max_tokens=5)
    except openai.RateLimitError as e:
        assert e.status_code == 429, e.status_code
        assert e.code == "rate_limit_exceeded", e.code
        assert e.type == "requests", e.type
        assert "on requests per day (RPD): Limit 1, Used 1, Requested 1." in e.message, e.message
        assert e.response.headers["x-should-retry"] == "false"
        assert e.response.headers.get("x-request-id", "").startswith("req_")
    else:
        raise AssertionError("the second request of the day was admitted")
    elapsed = time.monotonic() - started
    assert len(sent) == 2, f"the SDK retried a day limit: {len(sent)} requests"
    assert elapsed < 1.0, f"the SDK waited {elapsed:.2f}s before giving up"
    print(f"day limit: RateLimitError after {len(sent)} requests, no retry")


def test_short_window_retries_after_retry_after_ms_and_succeeds():
    sent = []
    c = client(SHORT_KEY, sent)
    c.chat.completions.create(model="short-model", messages=MESSAGES, max_tokens=5)
    started = time.monotonic()
    r = c.chat.completions.create(model="short-model", messages=MESSAGES, max_tokens=5)
    elapsed = time.monotonic() - started
    assert r.choices[0].message.content.startswith("tok"), r
    assert len(sent) == 3, f"expected one 429 and one retry, saw {len(sent)} requests"
    # One request per second: the SDK waited what retry-after-ms said.
    assert 0.5 <= elapsed < 5.0, f"retried after {elapsed:.2f}s"
    print(f"short window: retried once after {elapsed:.2f}s and succeeded")


def test_stream_works_unchanged_and_is_counted():
    c = openai.OpenAI(base_url=BASE, api_key=STREAM_KEY)
    text, usage = "", None
    stream = c.chat.completions.create(
        model="stream-model",
        messages=MESSAGES,
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "tok " * 9, repr(text)
    assert usage is not None and usage.completion_tokens == 9, usage

    # Without include_usage the SDK sees no usage chunk at all.
    chunks = list(
        c.chat.completions.create(model="stream-model", messages=MESSAGES, max_tokens=4, stream=True)
    )
    assert all(ch.usage is None for ch in chunks), chunks
    assert sum(len(ch.choices) == 0 for ch in chunks) == 0, "a usage chunk leaked"

    # Counted: 9 + 4 output tokens settled; this request reserves 1 more.
    raw = c.chat.completions.with_raw_response.create(
        model="stream-model", messages=MESSAGES, max_tokens=1
    )
    remaining = int(raw.headers["x-ratelimit-remaining-output-tokens-day"])
    assert remaining == 1_000_000 - 9 - 4 - 1, remaining
    print(f"stream: {len(text.split())} tokens received, counted exactly (remaining {remaining})")


def test_a_stream_the_upstream_breaks_off_raises_once_and_costs_what_was_generated():
    # The upstream breaks the stream off after 1 chunk, then after 300, at
    # full speed: the SDK gets every chunk, then Sluice's error event, which
    # it raises as APIError while iterating; it never retries (before,
    # Sluice's reply was empty, and the SDK retried twice, charged each time).
    for k in (1, 300):
        sent = []
        c = client(ABORT_KEY, sent)
        stream = c.chat.completions.create(
            model="abort-model",
            messages=MESSAGES,
            max_tokens=1000,
            stream=True,
            extra_headers={"x-mock-abort-after-chunks": str(k)},
        )
        text = ""
        try:
            for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
        except openai.APIError as e:
            assert "broke off the stream" in e.message, e.message
        else:
            raise AssertionError("the broken stream ended without an error")
        assert text == "tok " * k, f"{len(text.split())} chunks of {k}"
        assert len(sent) == 1, f"the SDK sent {len(sent)} requests"
    # Charged: 2 requests and the 301 tokens generated; this one reserves 1.
    raw = c.chat.completions.with_raw_response.create(
        model="abort-model", messages=MESSAGES, max_tokens=1
    )
    tokens = int(raw.headers["x-ratelimit-remaining-output-tokens-day"])
    requests = int(raw.headers["x-ratelimit-remaining-requests-day"])
    assert tokens == 1_000_000 - 301 - 1, tokens
    assert requests == 1_000 - 2 - 1, requests
    print("broken stream: APIError after every chunk, one request each, charged 301 tokens")


def test_a_spent_budget_raises_rate_limit_error_naming_it_in_money():
    # budget-model costs $0.01 per output token, nothing per input token:
    # max_tokens 5 costs $0.05, and the tenant's day is $0.10.
    sent = []
    c = client(BUDGET_KEY, sent)
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(
            model="budget-model", messages=MESSAGES, max_tokens=5
        )
    # The opt-in budget headers: the day's budget in dollars, after this one.
    assert raw.headers["x-ratelimit-limit-cost-day"] == "0.10", raw.headers
    assert raw.headers["x-ratelimit-remaining-cost-day"] == "0.00", raw.headers
    try:
        c.chat.completions.create(model="budget-model", messages=MESSAGES, max_tokens=5)
    except openai.RateLimitError as e:
        assert e.status_code == 429, e.status_code
        assert e.type == "cost", e.type
        assert (
            "Budget reached for budget-model in organization budget on cost per day (cost/day): "
            "Limit $0.10, Used $0.10, Requested $0.05." in e.message
        ), e.message
        assert e.response.headers["x-should-retry"] == "false"
    else:
        raise AssertionError("a request past the day's budget was admitted")
    assert len(sent) == 3, f"the SDK retried a spent budget: {len(sent)} requests"
    print("budget: RateLimitError in money after $0.10 spent, no retry")


def test_a_request_that_fits_soon_waits_instead_of_a_429():
    # wait-model: one request a second, and the tier lets a refused request
    # wait up to 2 s. The SDK's own retries are off: only Sluice waits.
    c = openai.OpenAI(base_url=BASE, api_key=WAIT_KEY, max_retries=0)
    c.chat.completions.create(model="wait-model", messages=MESSAGES, max_tokens=5)
    time.sleep(0.7)
    started = time.monotonic()
    raw = c.chat.completions.with_raw_response.create(
        model="wait-model", messages=MESSAGES, max_tokens=5
    )
    elapsed = time.monotonic() - started
    r = raw.parse()
    assert r.choices[0].message.content.startswith("tok"), r
    waited = int(raw.headers["x-sluice-waited-ms"])
    assert 100 <= waited <= 600, f"waited {waited} ms"
    assert elapsed >= waited / 1000 - 0.05, (elapsed, waited)
    # A client that will not wait gets the 429 at once.
    started = time.monotonic()
    try:
        c.chat.completions.create(
            model="wait-model",
            messages=MESSAGES,
            max_tokens=5,
            extra_headers={"x-sluice-max-wait-ms": "0"},
        )
    except openai.RateLimitError as e:
        assert e.status_code == 429, e.status_code
    else:
        raise AssertionError("a request that would not wait was admitted")
    assert time.monotonic() - started < 0.5
    print(f"waiting: admitted after {waited} ms instead of a 429; a client that will not wait gets the 429")


def test_a_stream_is_cut_at_a_hard_limit_and_reads_as_a_normal_completion():
    # The tenant's output budget is hard: a stream ends at what it reserved
    # (max_tokens 5), however long the upstream would go on (the mock is
    # told to generate 40 and ignore max_tokens).
    c = openai.OpenAI(base_url=BASE, api_key=HARD_KEY, max_retries=0)
    text, finish, usage = "", None, None
    stream = c.chat.completions.create(
        model="hard-model",
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-completion-tokens": "40"},
    )
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "tok " * 5, repr(text)
    assert finish == "length", finish
    assert usage is not None and usage.completion_tokens == 5, usage
    # Charged the 5 that went through; this one reserves 1 more.
    raw = c.chat.completions.with_raw_response.create(
        model="hard-model", messages=MESSAGES, max_tokens=1
    )
    remaining = int(raw.headers["x-ratelimit-remaining-output-tokens-day"])
    assert remaining == 1_000 - 5 - 1, remaining
    print("hard limit: the stream ended at its 5 reserved tokens with finish_reason length")


if __name__ == "__main__":
    print(f"openai {openai.__version__} against {BASE}")
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_")]
    for t in tests:
        t()
    print(f"{len(tests)} SDK tests passed")
    sys.exit(0)
