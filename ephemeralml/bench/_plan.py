"""What one benchmark run does: the model, the inputs, the concurrency levels and how
much work each section does (``--quick`` or full). Pure data, no I/O."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ephemeralml.common._errors import Error

__all__ = [
    "CHAT_MODEL",
    "CHAT_PROMPTS",
    "CONCURRENCY",
    "FULL",
    "GEN_CONCURRENCY",
    "GEN_FULL",
    "GEN_QUICK",
    "MODEL",
    "PROG",
    "QUICK",
    "SCHEMA_VERSION",
    "SENTENCES",
    "BenchError",
    "GenerationPlan",
    "Plan",
    "sentence",
]

PROG = "bench"
SCHEMA_VERSION = 1
MODEL = "all-MiniLM-L6-v2"

#: Concurrency levels of the throughput runs (bare: batches of this many sentences).
CONCURRENCY = (1, 4, 16, 64)

#: Short ordinary sentences, 10 to 14 tokens each ([CLS] and [SEP] included).
SENTENCES = (
    "The train to the city leaves every morning at seven.",
    "She bought fresh bread and cheese at the market today.",
    "Our team meeting has been moved to Thursday afternoon.",
    "The weather should be sunny with a light breeze tomorrow.",
    "He forgot his umbrella and got wet on the way home.",
    "Please send me the report before the end of the week.",
    "The children played in the park until it got dark.",
    "This restaurant serves the best pasta in the neighbourhood.",
    "My phone battery dies quickly when the screen is bright.",
    "The library closes early on Sundays and public holidays.",
    "We planted tomatoes and beans in the garden last spring.",
    "The new bridge will open to traffic next month.",
    "I usually drink a cup of tea before going to bed.",
    "The museum has a large collection of old maps.",
    "Traffic was heavy because of an accident on the highway.",
    "Her sister is studying medicine at a university abroad.",
    "The cat sleeps on the sofa most of the afternoon.",
    "They are planning a short trip to the mountains.",
    "The store offers free delivery for orders over fifty dollars.",
    "He practises the piano for an hour every evening.",
    "The printer on the second floor is out of paper.",
    "A good night's sleep helps you think more clearly.",
    "The bus was late again, so I walked to work.",
    "We watched an old film and ate popcorn last night.",
)


def sentence(i: int) -> str:
    """The ``i``-th input, the sentences used in turn."""
    return SENTENCES[i % len(SENTENCES)]


class BenchError(Error):
    """The benchmark could not run (a program did not start, a request failed).

    One of the project's errors, so the command line reports it like every program
    does (``bench: bench error: MESSAGE``, exit 1)."""

    code = "bench"


@dataclass(frozen=True)
class Plan:
    """How much work each section does (--quick or full)."""

    mode: str
    latency_n: int
    warmup: int
    throughput_total: int  # requests (sentences) per concurrency level
    setup_n: int
    crypto_n: int
    attest_n: int
    idle_connections: int
    max_enclaves: int
    rounds: int  # latency: interleaved blocks of bare / via host / direct
    reps: int  # throughput and scaling: repetitions, the median is reported
    scaling_concurrency: int = 16
    enclave_args: tuple[str, ...] = ()  # extra flags for every ephemeral-enclave

    def replace(self, **changes: Any) -> Plan:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The plan as the result's ``plan`` object."""
        return {
            "latency_requests": self.latency_n,
            "latency_rounds": self.rounds,
            "throughput_repetitions": self.reps,
            "warmup_requests": self.warmup,
            "throughput_requests_per_level": self.throughput_total,
            "session_setups": self.setup_n,
            "crypto_requests": self.crypto_n,
            "attestation_verifies": self.attest_n,
            "idle_connections": self.idle_connections,
            "max_enclaves": self.max_enclaves,
            "enclave_args": list(self.enclave_args),
        }


QUICK = Plan("quick", latency_n=300, warmup=30, throughput_total=384, setup_n=40,
             crypto_n=1000, attest_n=200, idle_connections=1000, max_enclaves=2,
             rounds=10, reps=3)  # fmt: skip
FULL = Plan("full", latency_n=2000, warmup=100, throughput_total=2048, setup_n=200,
            crypto_n=5000, attest_n=1000, idle_connections=1000, max_enclaves=3,
            rounds=20, reps=5)  # fmt: skip


# ---------------------------------------------------------------- generation

#: The chat model of the generation benchmark (``scripts/models.sh smollm2``).
CHAT_MODEL = "smollm2"

#: Streams at once in the generation throughput runs (issue 11: 8 ≥ 3 × 1).
GEN_CONCURRENCY = (1, 4, 8, 16)

#: Short chat prompts, one user message each; with greedy decoding most answers run
#: to ``max_tokens``, so every prompt gives tens of inter-token gaps.
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Explain in a few sentences how a bicycle works.",
    "Write a short poem about the sea.",
    "Give me three tips for sleeping better.",
    "Why is the sky blue?",
    "Describe a good breakfast.",
    "What should I pack for a weekend hiking trip?",
    "How do plants make their food?",
)


@dataclass(frozen=True)
class GenerationPlan:
    """How much work the generation benchmark does (--quick or full)."""

    mode: str
    reps: int  # latency passes over every prompt (bare and full interleaved)
    warmup: int  # unmeasured prompts on each path first
    #: Throughput: at least this many answers per level; each of the c threads asks
    #: for ceil(answers_per_level / c) in turn, so a level with few streams still runs
    #: long enough to measure.
    answers_per_level: int
    throughput_reps: int  # throughput: repetitions of every level, the median reported
    max_tokens: int = 64
    concurrency: tuple[int, ...] = GEN_CONCURRENCY
    enclave_args: tuple[str, ...] = ()

    def replace(self, **changes: Any) -> GenerationPlan:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        return {
            "prompts": len(CHAT_PROMPTS),
            "max_tokens": self.max_tokens,
            "latency_repetitions": self.reps,
            "warmup_prompts": self.warmup,
            "concurrency": list(self.concurrency),
            "answers_per_level": self.answers_per_level,
            "throughput_repetitions": self.throughput_reps,
            "enclave_args": list(self.enclave_args),
        }


GEN_QUICK = GenerationPlan("quick", reps=1, warmup=2, answers_per_level=4, throughput_reps=1,
                           max_tokens=32)  # fmt: skip
GEN_FULL = GenerationPlan("full", reps=3, warmup=2, answers_per_level=4, throughput_reps=1)
