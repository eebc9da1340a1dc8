"""A remote OpenAI-compatible upstream is just another EngineClient: a gateway in front of a gateway."""

from __future__ import annotations

import openai
import pytest

from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.upstream import UpstreamClient


def test_gateway_forwards_to_an_upstream(serve, tmp_path):
    back_cfg = ServeConfig.model_validate(
        {"models": [{"name": "fake", "model": "unused"}], "auth": {"enabled": False}}
    )
    with serve(back_cfg, {"fake": FakeClient()}) as back:
        front_cfg = ServeConfig.model_validate(
            {
                "models": [{"name": "remote", "upstream": back.url + "/v1", "upstream_model": "fake"}],
                "auth": {"enabled": False},
                "log": {"path": str(tmp_path / "front.jsonl")},
            }
        )
        with serve(front_cfg) as front:  # built from the config; warm-up checks the upstream answers
            client = openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0)
            chat = client.chat.completions.create(
                model="remote", messages=[{"role": "user", "content": "one two three"}], n=2, stop=["three"]
            )
            assert [c.message.content for c in chat.choices] == ["one two ", "one two "]
            assert chat.usage.completion_tokens > 0
            text = "".join(
                c.choices[0].text
                for c in client.completions.create(model="remote", prompt="a b c", stream=True)
                if c.choices
            )
            assert text == "a b c"


def test_upstream_errors_keep_their_status(serve):
    back_cfg = ServeConfig.model_validate(
        {"models": [{"name": "fake", "model": "unused"}], "auth": {"enabled": False}}
    )
    with serve(back_cfg, {"fake": FakeClient()}) as back:
        front_cfg = ServeConfig.model_validate(
            {"models": [{"name": "remote", "upstream": back.url + "/v1"}], "auth": {"enabled": False}}
        )
        # the upstream does not know the name "remote": its 404 comes through
        with serve(front_cfg, {"remote": UpstreamClient(back.url + "/v1", "remote")}) as front:
            client = openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.NotFoundError, match="does not exist"):
                client.completions.create(model="remote", prompt="hi")
