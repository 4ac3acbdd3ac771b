"""The pieces behind the newcomer's messages that run in process: the Hub advice and
offline mode (loading/hub.py), a malformed listen address (serving/listen.py), the client's
command line (options on either side of the command, a video where a picture was asked for)
and the messages docs/troubleshooting.md quotes. The parts that need a socket or a process
(the Hub probe, a held port, no server answering) are in tests/e2e/test_network_messages.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from diffusers_backend.loading import hub
from diffusers_backend.serving import client
from diffusers_backend.serving.listen import bind_problem

pytestmark = pytest.mark.usefixtures("hub_allowed")  # tests/conftest.py


# -- the Hub probe -------------------------------------------------------------------------


def test_offline_mode_makes_hub_calls_fail_at_once_and_is_undone(monkeypatch, tmp_path):
    """Inside the block huggingface_hub asks only the cache (what HF_HUB_OFFLINE=1 does)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    before = constants.HF_HUB_OFFLINE
    started = time.monotonic()
    with hub.offline_mode(), pytest.raises(LocalEntryNotFoundError):
        assert constants.is_offline_mode()
        hf_hub_download("nobody/no-such-model", "model_index.json", cache_dir=tmp_path)
    assert time.monotonic() - started < 2  # no request, so no retries
    assert constants.HF_HUB_OFFLINE == before


def test_advice_names_the_fix():
    advice = hub.unreachable_advice("huggingface.co: Name or service not known")
    assert advice.startswith("the Hub cannot be reached (huggingface.co: Name or service")
    assert "models folder" in advice and "HF_HUB_OFFLINE=1" in advice


# -- the listen check ----------------------------------------------------------------------


@pytest.mark.parametrize("addr,problem", [("50051", "'50051' is not HOST:PORT"),
                                          ("127.0.0.1:http", "'127.0.0.1:http' is not "
                                                             "HOST:PORT")])
def test_a_malformed_address_is_named(addr, problem):
    assert bind_problem(addr) == problem


# -- the client's command line -------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--addr", "h:1", "-q", "--wait", "status"],
                                  ["status", "--addr", "h:1", "-q", "--wait"],
                                  ["-q", "status", "--addr", "h:1", "--wait"]])
def test_connection_options_go_on_either_side(argv):
    args = client.build_parser().parse_args(argv)
    assert (args.command, args.addr, args.quiet, args.wait) == ("status", "h:1", True, True)


def test_defaults_hold_when_no_option_is_given():
    args = client.build_parser().parse_args(["health"])
    assert (args.addr, args.quiet, args.wait, args.timeout) == (
        client.DEFAULT_ADDR, False, False, None)


def test_a_video_written_under_a_picture_name_is_renamed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(b"\0\0\0\x18ftypisom")
    reply = client._video_reply(f"video written to {tmp_path / 'cat.png'}; seed=1", "cat.png")
    assert reply.splitlines() == [f"video written to {tmp_path / 'cat.mp4'}; seed=1",
                                  "note: the loaded model makes videos; renamed cat.png to "
                                  "cat.mp4"]
    assert (tmp_path / "cat.mp4").is_file() and not (tmp_path / "cat.png").exists()


def test_a_video_is_not_renamed_over_another_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(b"new")
    (tmp_path / "cat.mp4").write_bytes(b"old")
    reply = client._video_reply("video written to x", "cat.png")
    assert "cat.png is an MP4 (not renamed: cat.mp4 exists)" in reply
    assert (tmp_path / "cat.mp4").read_bytes() == b"old"


# -- docs/troubleshooting.md shows what the code says ----------------------------------------
TROUBLESHOOTING = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"


def shown(section: str) -> list[str]:
    """The lines of the first text block under a heading of docs/troubleshooting.md."""
    body = TROUBLESHOOTING.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return body.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def test_troubleshooting_shows_the_unreachable_hub_message(monkeypatch):
    from diffusers_backend.loading.model_ref import missing_model_message

    monkeypatch.setattr(hub, "unreachable", lambda: "huggingface.co: Name or service not known")
    assert shown("No internet, or the Hub cannot be reached") == [
        missing_model_message("stabilityai/sd-turbo", "", "")]


def test_troubleshooting_shows_the_did_you_mean_messages():
    from diffusers import StableDiffusionPipeline

    from diffusers_backend.errors import LoadError
    from diffusers_backend.loading.model_ref import ModelRef, RefKind
    from diffusers_backend.loading.options_table import ignored_option_warning
    from diffusers_backend.loading.pipeline_loader import resolve_class
    from diffusers_backend.loading.spec import LoadSpec

    with pytest.raises(LoadError) as typo:
        resolve_class(LoadSpec(model="m", pipeline_type="img2imgg"),
                      ModelRef(RefKind.HUB, "m"))
    assert shown("Unknown pipeline_type or option") == [
        str(typo.value), ignored_option_warning("guidance_scael", StableDiffusionPipeline)]


