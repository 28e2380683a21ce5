"""What `vision-attn serve` is set up with: request limits, batching, and how long connections may take."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Limits:
    """What a request may hold; anything over a limit gets a 4xx naming it."""

    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 25_000_000
    max_question_chars: int = 500

    def __post_init__(self) -> None:
        for flag, value in [
            ("--max-body-mb", self.max_body_bytes),
            ("--max-pixels", self.max_pixels),
            ("--max-question-chars", self.max_question_chars),
        ]:
            if value < 1:
                raise ValueError(f"{flag} must be positive, got {value}")


@dataclass(frozen=True)
class ServeOptions:
    """Everything `serve` needs besides the model folder; each field is the `vision-attn serve` flag of its name.

    Timeouts are in seconds: `keep_alive_timeout` closes a connection idle after a response, `header_timeout`
    one that has not sent a whole request head that long after it opened or after its last response,
    `body_timeout` a request whose body has not arrived that long after its head (408), and `timeout` answers
    504 to a request that waited that long for the model. Over `max_connections` open connections a new one
    gets a 503.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    threads: int = 0  # torch threads; 0 = the available cores
    max_batch_size: int = 16
    batch_timeout: float = 0.01
    timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1000
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        positive = {
            "--max-batch-size": self.max_batch_size,
            "--timeout": self.timeout,
            "--keep-alive-timeout": self.keep_alive_timeout,
            "--header-timeout": self.header_timeout,
            "--body-timeout": self.body_timeout,
            "--max-connections": self.max_connections,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        if self.batch_timeout < 0:
            raise ValueError(f"--batch-timeout must be 0 or more seconds, got {self.batch_timeout}")
        if self.threads < 0:
            raise ValueError(f"--threads must be 0 (the cores) or more, got {self.threads}")

    @property
    def torch_threads(self) -> int:
        return self.threads or available_cores()
