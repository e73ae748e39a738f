"""A mock deployment that serves the tiny chat model beside the embedding model.

The model owner's steps, with the real programs: the tiny chat model directory
(:mod:`tests.models.tiny_chat`) is packaged under the mock deployment's local KMS
with ``ephemeral model package --mock``, uploaded into its store, and the enclave is
started with ``--model all-MiniLM-L6-v2 --model tiny-chat``. Import the fixture into
a test module: ``from tests.integration.chat_stack import chat_stack``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import (
    BIN,
    Stack,
    free_port,
    program_env,
    start_enclave,
    start_host,
)
from tests.models.tiny_chat import MODEL_ID, write_tiny_chat

__all__ = ["CHAT_MODEL", "chat_stack", "start_chat_stack"]

CHAT_MODEL = MODEL_ID


def _cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([str(BIN / "ephemeral"), *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr


def start_chat_stack(tmp: pytest.TempPathFactory, *enclave_extra: str) -> Stack:
    home = tmp.mktemp("chat-home")
    env = program_env(home)
    enclave_port = free_port()
    host, host_port = start_host(env, enclave_port)
    try:
        kms = "http://" + host.ready["mock_kms"].removeprefix("tcp:")
        model_dir = write_tiny_chat(home / "tiny-chat-model")
        bundle = home / "tiny-chat-bundle"
        _cli(env, "model", "package", "--mock", "--kms-endpoint", kms, "--model-dir",
             str(model_dir), "--model-id", MODEL_ID, "--out", str(bundle))  # fmt: skip
        _cli(env, "model", "upload", "--mock", str(bundle), "--model-id", MODEL_ID)
        enclave = start_enclave(
            env, enclave_port, host, "--model", "all-MiniLM-L6-v2", "--model", MODEL_ID,
            *enclave_extra,
        )  # fmt: skip
    except BaseException:
        host.stop()
        raise
    return Stack(home, env, enclave, host, enclave_port, host_port)


@pytest.fixture(scope="module")
def chat_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_chat_stack(tmp_path_factory)
    yield s
    codes = (s.host.stop(), s.enclave.stop())
    assert codes == (0, 0), "".join(s.host.lines + s.enclave.lines)
