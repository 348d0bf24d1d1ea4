"""Shared fixtures: an agent, sessions with an External Query lane, the fixture files."""

import json
import pathlib
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List

import pytest

from a3s_code import (
    Agent,
    AgentSession,
    LaneHandlerConfig,
    SessionLane,
    SessionOptions,
    SessionQueueConfig,
    TaskHandlerMode,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "v1"


def load_fixture(name: str) -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.fixture
def agent(tmp_path: pathlib.Path) -> Agent:
    config = tmp_path / "agent.hcl"
    config.write_text("queue {\n  enable_metrics = true\n}\n")
    return Agent.create(config)


SessionFactory = Callable[..., Awaitable[AgentSession]]


@pytest.fixture
async def make_session(agent: Agent, tmp_path: pathlib.Path) -> AsyncIterator[SessionFactory]:
    """`await make_session(timeout_ms=..., **queue_config)`: a session on `tmp_path` whose Query
    lane is External; closed at the end of the test."""
    opened: List[AgentSession] = []

    async def make(timeout_ms: int = 30_000, **queue: Any) -> AgentSession:
        queue.setdefault("enable_metrics", True)
        session = agent.session(tmp_path, SessionOptions(SessionQueueConfig(**queue)))
        session.set_lane_handler(
            SessionLane.QUERY,
            LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=timeout_ms),
        )
        opened.append(session)
        return session

    yield make
    for session in opened:
        await session.close()
