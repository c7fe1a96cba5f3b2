"""The hosted backend against a local OpenAI-compatible server (request shape, streaming,
errors), and the CLI ``story`` command through it. No internet needed."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import traceback
import tracemalloc

import pytest
from conftest import cli
from fake_llm_server import FakeLLMServer, sse

from storyteller.cli import main
from storyteller.story import StoryError, StoryOptions, StoryPrompt, StorySession, get_backend
from storyteller.story.backends import hosted
from storyteller.story.backends.hosted import HostedBackend
from storyteller.story.keys import Scrubber, is_loopback, key_for

TOKEN = "hf_FAKEtoken0123456789secret"
HF = "hf_REALhuggingFACEtoken987654"  # a Hugging Face token in the environment
CAPTION = "a black dog runs through the snow"


pytestmark = pytest.mark.usefixtures("no_story_credentials")


@pytest.fixture
def server():
    with FakeLLMServer() as fake:
        yield fake


def backend_for(server, timeout=5.0, token=TOKEN) -> HostedBackend:
    return HostedBackend(model="fake-model", base_url=server.url, token=token, timeout=timeout)


def assert_no_token(exc: BaseException) -> None:
    """The token is in no part of the error a user or a log could see."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert TOKEN not in text and TOKEN not in repr(exc)


def test_request_shape_and_streamed_deltas(server):
    options = StoryOptions(genre="mystery", tone="eerie", temperature=0.6, seed=7)
    backend = backend_for(server)
    deltas = list(backend.stream(StoryPrompt("start", (CAPTION,)), options))

    assert deltas == ["The dog ran.", " It barked at the sea.", " Then it slept."]
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
    body = request["json"]
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["max_tokens"] == options.token_budget
    assert body["temperature"] == 0.6 and body["seed"] == 7
    system, user = body["messages"]
    assert system["role"] == "system" and "mystery" in system["content"]
    assert "eerie" in system["content"]
    assert user["role"] == "user" and "A black dog runs through the snow." in user["content"]
    assert "dog" in user["content"] and f"about {options.words} words" in user["content"]
    assert TOKEN not in backend.describe() and TOKEN not in repr(backend)


def test_text_arrives_while_the_server_is_still_generating(server):
    """The first sentence reaches the caller before the server has sent the last chunk."""
    server.hold_before_last = threading.Event()
    stream = backend_for(server).stream(StoryPrompt("start", (CAPTION,)), StoryOptions())
    assert next(stream) == "The dog ran."
    assert not server.hold_before_last.is_set()
    server.hold_before_last.set()
    assert "".join(stream) == " It barked at the sea. Then it slept."


@pytest.mark.parametrize(
    "status, message",
    [
        (401, "HF_TOKEN"),
        (403, "HF_TOKEN"),
        (404, "'fake-model' was not found"),
        (429, "rate-limiting"),
        (500, "HTTP 500"),
        (503, "HTTP 503"),
    ],
)
def test_http_errors_are_clear_and_never_leak_the_token(server, status, message):
    server.status = status  # the fake echoes the Authorization header in its error body
    with pytest.raises(StoryError) as info:
        list(backend_for(server).stream(StoryPrompt("start", (CAPTION,)), StoryOptions()))
    assert message in str(info.value) and str(info.value).startswith("hosted:")
    assert_no_token(info.value)


def test_timeout_before_the_answer(server):
    server.delay = 3.0
    with pytest.raises(StoryError, match=r"did not answer within 0\.5 s") as info:
        list(
            backend_for(server, timeout=0.5).stream(
                StoryPrompt("start", (CAPTION,)), StoryOptions()
            )
        )
    assert_no_token(info.value)


def test_timeout_in_the_middle_of_the_stream(server):
    server.hold_before_last = threading.Event()  # never set while the client waits
    stream = backend_for(server, timeout=0.5).stream(
        StoryPrompt("start", (CAPTION,)), StoryOptions()
    )
    with pytest.raises(StoryError, match="did not answer"):
        list(stream)


def test_error_event_in_the_middle_of_the_stream(server):
    server.fail_after = 1
    with pytest.raises(StoryError, match="the fake model crashed"):
        list(backend_for(server).stream(StoryPrompt("start", (CAPTION,)), StoryOptions()))


def test_connection_refused():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = HostedBackend(model="m", base_url=f"http://127.0.0.1:{port}", token=TOKEN, timeout=2)
    with pytest.raises(StoryError, match="cannot connect to http://127.0.0.1") as info:
        list(backend.stream(StoryPrompt("start", (CAPTION,)), StoryOptions()))
    assert_no_token(info.value)


def test_hugging_face_without_a_token_says_how_to_set_one():
    with pytest.raises(StoryError, match="HF_TOKEN"):
        HostedBackend(model="some/model")


def test_chat_preamble_and_echo_are_stripped(server):
    server.chunks = [
        "Here is the next part:\n\n",
        "It barked at the sea. ",
        "The waves came closer. ",
        "Then it ran",  # cut off by the token budget: dropped
    ]
    prompt = StoryPrompt("continue", (CAPTION,), "A dog ran. It barked at the sea.")
    text = "".join(backend_for(server).stream(prompt, StoryOptions()))
    assert text == "The waves came closer."


def test_get_backend_reuses_the_same_instance(server):
    first = get_backend("hosted", model="fake-model", base_url=server.url, token=TOKEN)
    again = get_backend("hosted", model="fake-model", base_url=server.url, token=TOKEN)
    other = get_backend("hosted", model="other-model", base_url=server.url, token=TOKEN)
    assert first is again and other is not first


def test_cli_story_with_a_caption_through_the_fake_server(server, tmp_path):
    result = cli(
        "story",
        "--caption",
        CAPTION,
        "--backend",
        "hosted",
        "--base-url",
        server.url,
        "--model",
        "fake-model",
        "--genre",
        "comedy",
        env={"STORYTELLER_STORY_API_KEY": TOKEN, "HF_TOKEN": HF, "HF_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"caption: {CAPTION}"
    assert "The dog ran. It barked at the sea. Then it slept." in result.stdout
    assert "hosted: fake-model" in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    # the self-hosted server gets its own key, never the Hugging Face token
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "comedy" in server.requests[0]["json"]["messages"][0]["content"]


def test_cli_story_failure_still_shows_the_caption(server, capsys, monkeypatch):
    server.status = 401
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code = main(["story", "--caption", CAPTION, "--base-url", server.url])
    out, err = capsys.readouterr()
    assert code == 2 and out.startswith(f"caption: {CAPTION}")
    assert "error: hosted:" in err and "HF_TOKEN" in err and TOKEN not in out + err


def test_cli_story_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["story", "--help"])
    assert info.value.code == 0 and "--base-url" in capsys.readouterr().out


def test_cli_story_from_images(server, tiny_run, tiny_data, tmp_path, capsys):
    images = sorted((tiny_data / "Images").glob("*.jpg"))[:2]
    args = [
        "--checkpoint",
        str(tiny_run / "best_model.pth"),
        "--vocab",
        str(tiny_run / "vocab.pkl"),
    ]
    args += ["--backend", "hosted", "--base-url", server.url, "--beam", "3"]
    server.replies = [
        ["The dog ran. ", "It barked at the sea. ", "Then it slept."],
        ["The cat woke up. ", "It found the dog asleep on the sand."],
    ]
    code = main(["story", *map(str, images), *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    captions = [
        line[len("caption: ") :] for line in out.splitlines() if line.startswith("caption: ")
    ]
    assert len(captions) == 2 and all(len(c.split()) >= 2 for c in captions)
    first, second = (r["json"]["messages"][-1]["content"] for r in server.requests)
    assert captions[0].capitalize() in first and captions[1].capitalize() in second
    assert out.count("The dog ran. It barked at the sea. Then it slept.") == 1
    assert out.count("The cat woke up. It found the dog asleep on the sand.") == 1

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["story", str(broken), *args]) == 2
    assert "cannot read image" in capsys.readouterr().err


# -- which key goes where ---------------------------------------------------------------------


def test_hf_token_is_never_sent_to_a_self_hosted_server(server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    backend = get_backend("auto", base_url=server.url, model="fake-model")
    assert "".join(backend.stream(StoryPrompt("start", (CAPTION,)), StoryOptions()))
    assert "authorization" not in server.requests[0]["headers"]  # no key at all
    assert "(no key sent)" in describe_backends_with(monkeypatch, server.url)["hosted"]


def test_a_self_hosted_server_gets_its_own_key(server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    list(get_backend("hosted", base_url=server.url).stream(StoryPrompt("start", (CAPTION,)), QUICK))
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    line = describe_backends_with(monkeypatch, server.url)["hosted"]
    assert "key from STORYTELLER_STORY_API_KEY" in line and TOKEN not in line


def describe_backends_with(monkeypatch, base_url):
    from storyteller.story import describe_backends

    monkeypatch.setenv("STORYTELLER_STORY_BASE_URL", base_url)
    return describe_backends()


QUICK = StoryOptions(seed=0)


def test_hugging_face_hosts_get_the_hf_token_and_others_do_not(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    for url in (
        None,
        "https://router.huggingface.co/v1",
        "https://huggingface.co/api",
        "https://hf.co/v1",
        "https://abc123.us-east-1.aws.endpoints.huggingface.cloud/v1",
    ):
        assert key_for(url) == HF, url
    for url in (
        "https://my-server.example.com/v1",
        "https://huggingface.co.evil.example/v1",  # look-alike hosts are not Hugging Face
        "https://evilhuggingface.co/v1",
        "http://127.0.0.1:8080",
    ):
        assert key_for(url) == TOKEN, url
    assert key_for("https://my-server.example.com", token="explicit-key") == "explicit-key"


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:8000/v1", "http://story.example.com", "http://huggingface.co/v1"]
)
def test_no_key_goes_over_plain_http_to_another_machine(url, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    with pytest.raises(StoryError, match="refusing to send an API key over plain http") as info:
        HostedBackend(base_url=url)
    assert "\n" not in str(info.value) and TOKEN not in str(info.value)
    assert_no_token(info.value)
    line = describe_backends_with(monkeypatch, url)["hosted"]
    assert line.startswith("refused: refusing to send an API key") and TOKEN not in line
    # the same server with no key to send is allowed (a LAN server that needs none)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("STORYTELLER_STORY_API_KEY")
    assert HostedBackend(base_url=url)._token is None


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "[::1]", "app.localhost"])
def test_plain_http_on_this_machine_may_carry_a_key(host, monkeypatch):
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    assert is_loopback(host.strip("[]"))
    assert HostedBackend(base_url=f"http://{host}:8080/v1")._token == TOKEN
    assert not is_loopback("10.0.0.1") and not is_loopback("localhost.example.com")


def test_a_key_the_server_writes_into_the_story_is_masked(server, monkeypatch):
    """A hostile server echoes the key it received, split across two chunks: never shown."""
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    monkeypatch.setenv("HF_TOKEN", HF)  # known, not sent, and masked all the same
    cut = len(TOKEN) // 2
    server.chunks = [
        "The dog found a note. It said Bearer " + TOKEN[:cut],
        TOKEN[cut:] + " in red ink. Then ",
        "it read " + HF + " too. The end.",
    ]
    session = StorySession(get_backend("hosted", base_url=server.url), QUICK)
    shown = list(session.start(CAPTION))
    everything = "".join(shown) + session.story + repr(session.turns)
    assert TOKEN not in everything and HF not in everything
    assert "It said Bearer *** in red ink." in session.story
    assert "it read *** too." in session.story
    # ... and through the CLI, as a user would see it
    server.requests.clear()
    code = main(["story", "--caption", CAPTION, "--base-url", server.url])
    assert code == 0
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"


def test_cli_output_never_shows_an_echoed_key(server, monkeypatch, capsys):
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    server.chunks = ["The key was Bearer hf_FAKE", "token0123456789secret. The end."]
    assert main(["story", "--caption", CAPTION, "--base-url", server.url]) == 0
    out, err = capsys.readouterr()
    assert TOKEN not in out + err and "The key was Bearer ***." in out


def test_error_events_are_masked_too(server, monkeypatch):
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    server.chunks = ["The dog ran. ", "It barked. ", "x"]
    server.fail_after = 1
    server.fail_message = f"crashed holding Bearer {TOKEN}"
    with pytest.raises(StoryError, match=r"crashed holding Bearer \*\*\*") as info:
        list(
            get_backend("hosted", base_url=server.url).stream(
                StoryPrompt("start", (CAPTION,)), QUICK
            )
        )
    assert_no_token(info.value)


@pytest.mark.parametrize("secret", [TOKEN, "k3y-" + "x" * 40])
def test_scrubber_masks_a_secret_split_at_any_point(secret):
    text = f"one {secret} two {secret}{secret} three {secret[:-1]} end"
    expected = f"one *** two ****** three {secret[:-1]} end"
    for cut in range(len(text) + 1):
        for second in (cut, min(cut + 3, len(text))):
            scrubber = Scrubber([secret])
            pieces = [text[:cut], text[cut:second], text[second:]]
            out = "".join(scrubber.feed(p) for p in pieces) + scrubber.finish()
            assert out == expected, (cut, second)


# -- a turn bounded by the clock and by size, whatever the server does ------------------------

KEEP_ALIVE = b": keepalive"
EMPTY_DELTA = sse("")
LIMIT = 1.0  # seconds a turn may take in these tests
MARGIN = 1.5  # seconds past the limit a turn may end (the watchdog, a slow test machine)


def timed_turn(server, timeout=30.0) -> tuple[StorySession, float]:
    """A story turn on ``server`` with the turn limit :data:`LIMIT` and a much longer per-read
    ``timeout``: how long it took (it must not wait for the server)."""
    backend = HostedBackend(model="fake-model", base_url=server.url, timeout=timeout)
    session = StorySession(backend, StoryOptions(seed=0, time_limit=LIMIT))
    started = time.monotonic()
    try:
        list(session.start(CAPTION))
    finally:
        took = time.monotonic() - started
    return session, took


@pytest.mark.parametrize("filler", [KEEP_ALIVE, EMPTY_DELTA], ids=["keep-alive", "empty-delta"])
def test_keep_alives_and_empty_deltas_do_not_hold_a_turn_past_its_limit(server, filler):
    server.chunks = ["The dog ran. ", "It barked at the sea. "]
    server.forever, server.chunk_delay = (lambda i: filler), 0.02
    session, took = timed_turn(server)
    assert took < LIMIT + MARGIN
    assert session.story == "The dog ran. It barked at the sea."
    assert session.notes == [f"the story stopped at its time limit of {LIMIT:g} s per turn"]


@pytest.mark.parametrize("stall", ["before the headers", "before any text", "mid-stream"])
def test_a_server_that_never_ends_is_cut_at_the_limit(server, stall):
    server.hold_before_last = threading.Event()  # never set while the client waits
    if stall == "before the headers":
        server.delay = 20.0
    elif stall == "before any text":
        server.chunks, server.forever, server.chunk_delay = [], (lambda i: KEEP_ALIVE), 0.05
    else:
        server.chunks = ["The dog ran. ", "It barked at the sea. ", "never sent"]
    started = time.monotonic()
    if stall == "mid-stream":
        session, took = timed_turn(server)
        assert session.story == "The dog ran. It barked at the sea."
    else:
        with pytest.raises(StoryError, match=r"sent no story text within .* limit of 1 s"):
            timed_turn(server)
        took = time.monotonic() - started
    assert took < LIMIT + MARGIN


@pytest.mark.parametrize("sentences", [True, False], ids=["sentences", "one-endless-word"])
def test_a_server_ignoring_max_tokens_is_cut_with_bounded_memory(server, sentences):
    """A server that streams 16 KB chunks as fast as it can, for ever."""
    from storyteller.story.limits import MAX_TURN_CHARS

    def chunk(i: int) -> bytes:
        return sse("".join(f"Part {i}-{j} of the tale goes on. " for j in range(500))[:16_000])

    server.chunks, server.forever = [], chunk if sentences else (lambda i: sse("a" * 16_000))
    tracemalloc.start()
    try:
        session, took = timed_turn(server)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.8 * MAX_TURN_CHARS < len(session.story) <= MAX_TURN_CHARS
    assert f"the story turn was cut at {MAX_TURN_CHARS:,} characters" in session.notes
    assert peak < 16 * 2**20 and took < LIMIT + MARGIN  # a few MB, not hundreds


def test_a_redirect_is_not_followed_and_the_key_stays_home(server, monkeypatch):
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    with FakeLLMServer() as elsewhere:
        server.status, server.location = 302, f"{elsewhere.url}/v1/chat/completions"
        backend = get_backend("hosted", base_url=server.url)
        with pytest.raises(StoryError, match=r"redirect \(HTTP 302\).* not followed") as info:
            list(backend.stream(StoryPrompt("start", (CAPTION,)), QUICK))
        assert elsewhere.requests == []  # the other host heard nothing, so no key
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert_no_token(info.value)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class TunnelProxy:
    """A CONNECT-only proxy on 127.0.0.1 that records the targets it was asked for."""

    def __init__(self):
        self.targets: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += client.recv(4096)
        target = request.split()[1].decode()
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)


def test_a_proxy_relays_a_tunnel_and_no_proxy_is_honoured(server, monkeypatch):
    proxy = TunnelProxy()
    monkeypatch.setenv("STORYTELLER_STORY_API_KEY", TOKEN)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    backend = get_backend("hosted", base_url=server.url)
    assert "".join(backend.stream(StoryPrompt("start", (CAPTION,)), QUICK)).startswith("The dog")
    assert proxy.targets == [server.url.removeprefix("http://")]
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert "".join(backend.stream(StoryPrompt("start", (CAPTION,)), QUICK)).startswith("The dog")
    assert len(proxy.targets) == 1 and len(server.requests) == 2
    proxy.listener.close()


def test_hugging_face_goes_through_the_same_bounded_client(server, monkeypatch):
    """No base URL: the router gets the Hugging Face token, the model id and the same
    deadline as any server."""
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setattr(hosted, "HF_ROUTER", server.url + "/v1")
    backend = get_backend("hosted", model="meta-llama/Llama-3.1-8B-Instruct")
    assert "".join(backend.stream(StoryPrompt("start", (CAPTION,)), QUICK)).startswith("The dog")
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {HF}"
    assert request["json"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"


# -- text shown in a terminal ----------------------------------------------------------------


def test_escape_sequences_never_reach_the_terminal(server, capsys):
    server.chunks = ["\x1b]0;pwned\x07The dog ran. \x1b[2J", "It barked\x07 at\r the \x9b2Jsea. "]
    caption = "a dog \x1b[31mred\x1b[0m\tand\x1b]8;;http://x\x1b\\ white"
    assert main(["story", "--caption", caption, "--base-url", server.url]) == 0
    out, err = capsys.readouterr()
    assert not any(c in out + err for c in "\x1b\x07\r\x9b"), repr(out + err)
    assert "pwned" not in out and "The dog ran. It barked at the sea." in out
    assert out.startswith("caption: a dog red\tand white\n")
