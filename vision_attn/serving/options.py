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
class Timeouts:
    """Seconds a connection or request may take (each a flag: --timeout, --keep-alive-timeout, ...)."""

    request: float = 60.0  # waiting for the model; then a 504
    keep_alive: float = 5.0  # idle after an answer; then the connection is closed
    header: float = 10.0  # for a whole request head, from a connection's opening or its last answer; then closed
    body: float = 60.0  # for a body to arrive after its head; then a 408

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                flag = "--timeout" if name == "request" else f"--{name.replace('_', '-')}-timeout"
                raise ValueError(f"{flag} must be positive, got {value}")


@dataclass(frozen=True)
class ServeOptions:
    """Everything `serve` needs besides the model folder; a field is the `vision-attn serve` flag of its name."""

    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    threads: int = 0  # torch threads; 0: the available cores
    log_level: str = "info"
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_batch_size: int = 16
    batch_timeout: float = 0.01  # seconds a batch waits to fill after its first request arrived
    max_connections: int = 1000  # fewer if the open-file limit is low; a connection over it gets a 503
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"--max-batch-size must be positive, got {self.max_batch_size}")
        if self.max_connections < 1:
            raise ValueError(f"--max-connections must be positive, got {self.max_connections}")
        if self.batch_timeout < 0:
            raise ValueError(f"--batch-timeout must be 0 or more seconds, got {self.batch_timeout}")
        if self.threads < 0:
            raise ValueError(f"--threads must be 0 (the cores) or more, got {self.threads}")

    @property
    def torch_threads(self) -> int:
        return self.threads or available_cores()
